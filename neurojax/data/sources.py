"""Random-access data sources: IDX files, TFDS array_record, image folders,
synthetic, arrays.

A source follows grain's ``RandomAccessDataSource`` protocol: ``len(source)``
and ``source[i] -> {'image': uint8 [H, W, C], 'label': int}``. Every source
here also has:

- ``source.labels``: all labels as an int64 array (for balanced subsets);
- ``source.image_shape``: ``(H, W, C)``, with ``None`` for a size that varies;
- ``source.num_classes``: the number of classes if the source knows it, else
  ``None``;
- ``source.__getitems__(indices)``: a list of examples (batched reads).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import zlib
from typing import Any, Sequence

import numpy as np

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
MNIST_DIR = '/usr/share/datasets/mnist'
IDX_DEFAULT_DIRS = {'fashion_mnist': FASHION_MNIST_DIR, 'mnist': MNIST_DIR}
IDX_SPLITS = ('train', 'test')
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


class DataConfigError(ValueError):
  """A ``config.data`` field (or batch size / process count) is invalid."""


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not on disk; the message says how to get it."""


class IdxFormatError(ValueError):
  """An IDX file is corrupt, truncated or not an IDX file."""


# ---------------------------------------------------------------- arrays


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """In-memory source over ``images`` uint8 [N, H, W, C] and ``labels`` [N].

  ``images`` of shape [N, H, W] get a channel axis of size 1.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int | None = None

  def __post_init__(self):
    images = np.asarray(self.images)
    labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(
          'ArraySource needs uint8 images of shape [N, H, W, C] or [N, H, W],'
          f' got {images.dtype} {images.shape}.'
      )
    if len(images) != len(labels):
      raise ValueError(
          f'ArraySource got {len(images)} images but {len(labels)} labels.'
      )
    object.__setattr__(self, 'images', images)
    object.__setattr__(self, 'labels', labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': int(self.labels[index])}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]


# ------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzipped or not) into a native-endian numpy array.

  IDX layout: 2 zero bytes, a type code byte (0x08 uint8, 0x09 int8, 0x0B
  int16, 0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of
  dimensions d, d big-endian uint32 sizes, then the data, big-endian.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == b'\x1f\x8b':  # gzip magic, whatever the file is called
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise IdxFormatError(f'Cannot read IDX file {path}: {e}') from e
  if len(raw) < 4 or raw[:2] != b'\x00\x00' or raw[2] not in _IDX_DTYPES:
    raise IdxFormatError(
        f'{path} is not an IDX file (bad magic number {raw[:4].hex()}).'
    )
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise IdxFormatError(f'IDX file {path} is truncated inside its header.')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  actual = len(raw) - header_size
  if actual != expected:
    raise IdxFormatError(
        f'IDX file {path} is corrupt or truncated: header says shape {shape}'
        f' ({expected} data bytes) but the file has {actual} data bytes.'
    )
  data = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
  return data.astype(dtype.newbyteorder('='))


def _idx_missing_message(name: str, data_dir: str, missing: str) -> str:
  fix = (
      'Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)'
      f' or set config.data.data_dir to a folder holding the files.'
      if name == 'fashion_mnist'
      else 'Put the four IDX files (train-images-idx3-ubyte[.gz],'
      ' train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz],'
      f' t10k-labels-idx1-ubyte[.gz]) in {MNIST_DIR} or set'
      ' config.data.data_dir to their folder.'
  )
  return f'{name} IDX file {missing}[.gz] not found in {data_dir!r}. {fix}'


def _idx_corrupt_fix(name: str, data_dir: str) -> str:
  if name == 'fashion_mnist' and data_dir == FASHION_MNIST_DIR:
    return (
        'Reinstall it with `apt-get install --reinstall dataset-fashion-mnist`'
        ' (Debian/Ubuntu), or set config.data.data_dir to a folder holding'
        ' intact files.'
    )
  return (
      f'Replace the file with an intact copy, or check config.data.data_dir='
      f'{data_dir!r}'
      + (
          ' (the Debian package is dataset-fashion-mnist).'
          if name == 'fashion_mnist'
          else '.'
      )
  )


def _find_idx_file(name: str, data_dir: str, stem: str) -> str:
  for candidate in (stem + '.gz', stem):
    path = os.path.join(data_dir, candidate)
    if os.path.exists(path):
      return path
  raise DatasetNotFoundError(_idx_missing_message(name, data_dir, stem))


def idx_source(name: str, split: str, data_dir: str = '') -> ArraySource:
  """Loads an MNIST-format (IDX) split into memory.

  Args:
    name: 'fashion_mnist' or 'mnist' (picks the default folder and the hint
      given when files are missing).
    split: 'train' or 'test' (the t10k-* files).
    data_dir: folder with the IDX files; '' means the Debian default
      (/usr/share/datasets/fashion-mnist or /usr/share/datasets/mnist).
  """
  if split not in _IDX_FILES:
    raise DataConfigError(
        f'IDX split {split!r} is not one of {", ".join(map(repr, IDX_SPLITS))}'
        ' (set config.data.train_split / config.data.eval_split).'
    )
  data_dir = data_dir or IDX_DEFAULT_DIRS[name]
  image_path, label_path = (
      _find_idx_file(name, data_dir, stem) for stem in _IDX_FILES[split]
  )
  try:
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
      raise IdxFormatError(
          f'{image_path}: expected uint8 images [N, H, W], got'
          f' {images.dtype} {images.shape}.'
      )
    if labels.ndim != 1 or len(labels) != len(images):
      raise IdxFormatError(
          f'{label_path}: expected {len(images)} labels, got shape'
          f' {labels.shape}.'
      )
  except IdxFormatError as e:
    raise IdxFormatError(
        f"{str(e).rstrip('.')}. {_idx_corrupt_fix(name, data_dir)}"
    ) from None
  return ArraySource(images, labels, num_classes=10)


# ------------------------------------------------------------------ TFDS


def _tfds_missing_message(name: str, data_dir: str) -> str:
  where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
  build_dir = data_dir or '~/tensorflow_datasets'
  return (
      f'TFDS dataset {name!r} is not prepared as array_record in {where}.'
      f' Prepare it once with `tfds build {name} --file_format=array_record'
      f' --data_dir={build_dir}` (random access needs array_record), then'
      ' set config.data.data_dir to that --data_dir.'
  )


class TfdsSource:
  """A TFDS split read with ``tfds.data_source`` (array_record files).

  Images come out as uint8 [H, W, C] (grayscale as C=1); labels as ints.
  """

  def __init__(self, name: str, split: str, data_dir: str = ''):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetNotFoundError(
          f'config.data.name={name!r} is neither a registered TFDS dataset'
          ' (see tfds.list_builders()) nor prepared in config.data.data_dir.'
          f' {_tfds_missing_message(name, data_dir)}'
      ) from None
    if not builder.is_prepared():
      raise DatasetNotFoundError(_tfds_missing_message(name, data_dir))
    features = builder.info.features
    missing = {'image', 'label'} - set(features.keys())
    if missing:
      raise DataConfigError(
          f'TFDS dataset {name!r} has features {sorted(features.keys())};'
          f' neurojax needs {sorted(missing)} (keys "image" and "label").'
      )
    self.name, self.split = name, split
    self.num_classes = getattr(features['label'], 'num_classes', None)
    self.image_shape = tuple(features['image'].shape)
    try:
      self._source = builder.as_data_source(split=split)
      self._label_source = builder.as_data_source(
          split=split, decoders={'image': tfds.decode.SkipDecoding()}
      )
    except NotImplementedError as e:  # prepared, but not as array_record
      raise DatasetNotFoundError(
          f'{e}\n{_tfds_missing_message(name, data_dir)}'
      ) from None
    except ValueError as e:  # unknown split
      raise DataConfigError(
          f'TFDS split {split!r} of {name!r} is invalid: {e} Set'
          ' config.data.train_split / config.data.eval_split.'
      ) from None

  def __len__(self) -> int:
    return len(self._source)

  @staticmethod
  def _convert(example: dict[str, Any]) -> dict[str, Any]:
    image = np.asarray(example['image'])
    if image.ndim == 2:
      image = image[..., None]
    return {'image': image.astype(np.uint8, copy=False),
            'label': int(example['label'])}

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._convert(self._source[int(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    examples = self._source.__getitems__([int(i) for i in indices])
    return [self._convert(e) for e in examples]

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """All labels, read once without decoding images."""
    chunk, labels = 1024, []
    for start in range(0, len(self), chunk):
      keys = list(range(start, min(start + chunk, len(self))))
      labels += [e['label'] for e in self._label_source.__getitems__(keys)]
    return np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------- image folders

# torchvision's IMG_EXTENSIONS (compared lower-cased).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')


class ImageFileError(ValueError):
  """An image file of a folder source cannot be decoded."""


def _split_dir(root: str, split: str) -> str:
  if not root:
    raise DataConfigError(
        "config.data.source='folder' needs config.data.data_dir: the folder"
        ' holding <split>/<class>/<image> (e.g. data_dir=/data/cub200 with'
        ' /data/cub200/train/001.Black_footed_Albatross/*.jpg).')
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    found = sorted(e.name for e in os.scandir(root) if e.is_dir()) if (
        os.path.isdir(root)) else None
    raise DatasetNotFoundError(
        f'No folder {path!r} for split {split!r}'
        + (f' (config.data.data_dir={root!r} does not exist).' if found is None
           else f'; {root!r} holds {found}.')
        + ' Set config.data.data_dir / config.data.train_split / eval_split,'
        ' or lay the images out as <data_dir>/<split>/<class>/<image>.')
  return path


def _class_dirs(path: str, root: str, split: str) -> list[str]:
  classes = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=True)]
  if not classes:
    raise DatasetNotFoundError(
        f'{path!r} has no class folders; config.data.source=\'folder\' reads'
        f' {root}/{split}/<class>/<image>.')
  return classes


class FolderSource:
  """``root/<split>/<class>/**/<image>`` (an ImageFolder tree).

  Classes are the sorted folder names of ``class_names`` (by default this
  split's own, as torchvision's ``ImageFolder`` has them), files are sorted
  within a class (nested folders included), and images decode with PIL to
  uint8 RGB [H, W, 3], as torchvision's default loader does. ``split`` may
  join folders with ``+`` (``"train+val"``), read one after the other. A
  class folder of ``class_names`` missing here is allowed (an eval split
  without some classes); a folder not in ``class_names`` is an error, as is
  a split or class with no images.
  """

  def __init__(self, root: str, split: str, class_names: Sequence[str] | None = None):
    self.root, self.split = root, split
    parts = split.split('+')
    dirs = [_split_dir(root, s) for s in parts]
    if class_names is None:
      class_names = sorted(_class_dirs(dirs[0], root, parts[0]))
    self.class_names = list(class_names)
    index = {c: i for i, c in enumerate(self.class_names)}
    paths, labels = [], []
    for d, part in zip(dirs, parts):
      present = sorted(_class_dirs(d, root, part))
      unknown = [c for c in present if c not in index]
      if unknown:
        raise DataConfigError(
            f'{d!r} has class folders {unknown[:5]} that the train split'
            f' ({len(index)} classes) does not have; make the class folders'
            ' of every split the same.')
      for c in present:
        files = sorted(
            os.path.join(top, f)
            for top, _, names in os.walk(os.path.join(d, c), followlinks=True)
            for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
          raise DatasetNotFoundError(
              f'Class folder {os.path.join(d, c)!r} holds no images'
              f' ({", ".join(IMAGE_EXTENSIONS)}); add some or remove the folder.')
        paths += files
        labels += [index[c]] * len(files)
    self.paths = paths
    self.labels = np.asarray(labels, dtype=np.int64)
    self.num_classes = len(self.class_names)
    self.image_shape = (None, None, 3)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = self.paths[int(index)]
    try:
      with Image.open(path) as image:
        array = np.asarray(image.convert('RGB'), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for bad files
      raise ImageFileError(
          f'Cannot decode image {path!r} ({type(e).__name__}: {e}); remove or'
          ' replace the file.') from None
    return {'image': array, 'label': int(self.labels[int(index)])}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]


# ------------------------------------------------------------- synthetic


def synthetic_source(
    split: str,
    num_examples: int,
    shape: Sequence[int],
    num_classes: int,
    seed: int = 0,
) -> ArraySource:
  """A small learnable dataset: one random template per class plus noise.

  image = (template[label] + uniform noise in [0, 255]) / 2, as uint8. The
  templates come from ``default_rng([seed, 2])`` and are shared by all
  splits; labels (balanced, shuffled) and noise come from
  ``default_rng([seed, 0])`` for 'train' and ``default_rng([seed, 1])`` for
  any other split, so train and eval differ.
  """
  shape = tuple(int(d) for d in shape)
  templates = np.random.default_rng([seed, 2]).integers(
      0, 256, (num_classes, *shape)
  )
  rng = np.random.default_rng([seed, 0 if split == 'train' else 1])
  labels = rng.permutation(np.arange(num_examples) % num_classes)
  noise = rng.integers(0, 256, (num_examples, *shape))
  images = ((templates[labels] + noise) // 2).astype(np.uint8)
  return ArraySource(images, labels, num_classes=num_classes)


# -------------------------------------------------------- balanced subset


def balanced_subset(
    labels: np.ndarray,
    per_class: int,
    seed: int,
    num_classes: int | None = None,
) -> np.ndarray:
  """Indices of exactly ``per_class`` examples of each class, sorted.

  Class c's examples are drawn without replacement with
  ``default_rng([seed, c])``, so each class's choice does not depend on the
  others. Classes are ``range(num_classes)`` if given, else those present in
  ``labels``. Raises DataConfigError if a class has fewer than ``per_class``.
  """
  labels = np.asarray(labels).reshape(-1)
  classes = (
      range(num_classes) if num_classes else np.unique(labels).tolist()
  )
  chosen = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise DataConfigError(
          f'config.data.per_class={per_class} but class {c} has only'
          f' {len(members)} examples; lower config.data.per_class.'
      )
    rng = np.random.default_rng([seed, int(c)])
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
