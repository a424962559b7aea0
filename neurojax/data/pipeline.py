"""Deterministic, per-process-sharded grain pipelines built from the config.

Training order (the whole contract; it makes a run on P processes see the
same global batches as a run on 1 process, and a resumed run see the same
batches as an uninterrupted one):

- The train set has N examples (after the optional balanced subset),
  ``steps_per_epoch = N // batch_size`` (the remainder is dropped).
- Epoch e visits ``perm_e = np.random.default_rng([seed, e]).permutation(N)``
  truncated to ``steps_per_epoch * batch_size`` entries. Viewed as
  ``[steps_per_epoch, batch_size]``, row k is the global batch of step
  ``e * steps_per_epoch + k``.
- Process p of P takes columns ``[p * b, (p + 1) * b)`` with
  ``b = batch_size // P``; concatenating the local batches in process order
  gives the global batch.
- The example at global position i (= k * batch_size + column) of epoch e is
  augmented with ``np.random.default_rng([seed, e, i, 1])``. The trailing 1
  keeps this stream apart from the shuffle stream: numpy's SeedSequence
  pads short entropy with zeros, so ``[seed, e, 0]`` would equal
  ``[seed, e]``. With ``config.data.random_erasing``, the same generator,
  after the transform, then draws the erasing of the normalised image.

Eval visits every example once in order; the last global batch is padded
with zero images, label 0 and ``mask`` 0, and sliced per process the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Iterator, Sequence

import grain
import ml_collections
import numpy as np

from neurojax.data import augment
from neurojax.data import sources as sources_lib
from neurojax.data.sources import DataConfigError

SOURCES = ('idx', 'tfds', 'folder', 'synthetic')
IDX_NAMES = tuple(sources_lib.IDX_DEFAULT_DIRS)
_FOREVER = 2**62  # number of train steps served by TrainData.batches


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the loop need to know about the data."""

  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the model input
  num_train: int  # after the balanced subset
  num_eval: int
  steps_per_epoch: int


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """``default_rng([seed, epoch]).permutation(num_examples)``, read-only."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def _read(source, indices: Sequence[int]) -> list[dict[str, Any]]:
  indices = [int(i) for i in indices]
  if hasattr(source, '__getitems__'):
    return source.__getitems__(indices)
  return [source[i] for i in indices]


def _iterate(map_fn, start: int, stop: int, num_threads: int, prefetch: int):
  """Iterates ``map_fn(i)`` for i in [start, stop) with grain threads."""
  ds = grain.MapDataset.range(start, stop).map(map_fn)
  # At most `prefetch` elements are in flight, so more threads would idle.
  options = grain.ReadOptions(
      num_threads=min(num_threads, prefetch), prefetch_buffer_size=prefetch
  )
  return iter(ds.to_iter_dataset(options))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _Split:
  """What the train and eval views share: the source, the global batch size,
  this process's slot, normalisation and the grain read options."""

  source: Any
  batch_size: int  # global
  process_index: int = 0
  process_count: int = 1
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  num_threads: int = 4
  prefetch: int = 2

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TrainData(_Split):
  """This process's view of the training stream (see the module docstring)."""

  indices: np.ndarray  # source index of each train example (the subset)
  transform: augment.TrainTransform
  random: bool  # whether transform (or erasing) needs an rng
  seed: int
  steps_per_epoch: int
  random_erasing: float = 0.0  # probability, applied after normalisation

  def positions(self, step: int) -> tuple[int, np.ndarray]:
    """(epoch, global positions within the epoch) of this process at step."""
    epoch, k = divmod(int(step), self.steps_per_epoch)
    b = self.local_batch_size
    start = k * self.batch_size + self.process_index * b
    return epoch, np.arange(start, start + b)

  def example_indices(self, step: int) -> np.ndarray:
    """Source indices of this process's examples at ``step``."""
    epoch, positions = self.positions(step)
    perm = epoch_permutation(len(self.indices), self.seed, epoch)
    return self.indices[perm[positions]]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The local batch of global step ``step``, computed synchronously."""
    epoch, positions = self.positions(step)
    examples = _read(self.source, self.example_indices(step))
    images, rngs = [], []
    for example, position in zip(examples, positions):
      rng = None
      if self.random:
        rng = np.random.default_rng([self.seed, epoch, int(position), 1])
      images.append(self.transform(example['image'], rng))
      rngs.append(rng)
    images = augment.normalize(np.stack(images), self.mean, self.std)
    if self.random_erasing > 0:
      for i, rng in enumerate(rngs):
        images[i] = augment.random_erasing(images[i], self.random_erasing, rng)
    return {
        'image': images,
        'label': np.array([e['label'] for e in examples], np.int32),
    }

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Local batches of steps start_step, start_step + 1, ... (endless).

    Up to ``prefetch`` batches are computed ahead, by at most
    ``num_threads`` grain threads; with either 0 they are computed on demand.
    Call ``.close()`` on the iterator to stop its threads early.
    """
    return _iterate(
        self.batch, start_step, _FOREVER, self.num_threads, self.prefetch
    )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class EvalData(_Split):
  """This process's view of the eval set: all examples, padded and masked."""

  transform: augment.EvalTransform
  image_shape: tuple[int, int, int]

  @property
  def num_examples(self) -> int:
    return len(self.source)

  @property
  def num_batches(self) -> int:
    return math.ceil(self.num_examples / self.batch_size)

  def batch(self, k: int) -> dict[str, np.ndarray]:
    """Local part of eval batch ``k``; padding has mask 0."""
    b = self.local_batch_size
    positions = k * self.batch_size + self.process_index * b + np.arange(b)
    real = positions < self.num_examples
    images = np.zeros((b, *self.image_shape), np.float32)
    labels = np.zeros((b,), np.int32)
    if real.any():
      examples = _read(self.source, positions[real])
      stacked = np.stack([self.transform(e['image']) for e in examples])
      images[real] = augment.normalize(stacked, self.mean, self.std)
      labels[real] = [e['label'] for e in examples]
    return {'image': images, 'label': labels, 'mask': real.astype(np.float32)}

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The ``num_batches`` local eval batches, in order."""
    return _iterate(
        self.batch, 0, self.num_batches, self.num_threads, self.prefetch
    )


@dataclasses.dataclass(frozen=True)
class Data:
  """What ``build_data`` returns."""

  info: DataInfo
  train: TrainData
  eval: EvalData


# ------------------------------------------------------------ validation


def _require(ok: bool, message: str):
  if not ok:
    raise DataConfigError(message)


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate_config(
    config,
    process_index: int | None = None,
    process_count: int | None = None,
) -> None:
  """Checks config.data, batch sizes and seed; loads nothing.

  With ``process_count`` given, also checks the process layout and that the
  batch sizes divide by it. Raises DataConfigError naming the field and the
  valid choices or the fix.
  """
  d = config.data
  _require(
      d.source in SOURCES,
      f'config.data.source={d.source!r} is not one of'
      f' {", ".join(map(repr, SOURCES))}.',
  )
  if d.source == 'idx':
    _require(
        d.name in IDX_NAMES,
        f'config.data.name={d.name!r} is not one of'
        f' {", ".join(map(repr, IDX_NAMES))} (for config.data.source=\'idx\';'
        " use source='tfds' for other datasets).",
    )
    for field in ('train_split', 'eval_split'):
      _require(
          d[field] in sources_lib.IDX_SPLITS,
          f'config.data.{field}={d[field]!r} is not one of'
          f' {", ".join(map(repr, sources_lib.IDX_SPLITS))} for IDX data.',
      )
  for field in ('per_class', 'subset_seed', 'num_classes', 'image_size',
                'crop_padding', 'eval_resize', 'num_threads', 'prefetch',
                'synthetic_train_size', 'synthetic_eval_size'):
    _require(
        _is_int(d[field]) and d[field] >= 0,
        f'config.data.{field}={d[field]!r} must be an integer >= 0.',
    )
  for field, ok, valid in (
      ('randaugment_ops', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: off; timm: 2)'),
      ('randaugment_magnitude', lambda v: 0 <= v <= 10, 'in [0, 10] (timm: 9)'),
      ('randaugment_magnitude_std', lambda v: v >= 0, '>= 0 (0: the magnitude itself; timm: 0.5)'),
      ('random_erasing', lambda v: 0 <= v <= 1, 'a probability in [0, 1] (0: off; timm: 0.25)'),
  ):
    _require(ok(d[field]), f'config.data.{field}={d[field]!r} must be {valid}.')
  _require(
      _is_int(config.seed) and config.seed >= 0,
      f'config.seed={config.seed!r} must be an integer >= 0.',
  )
  if d.source == 'synthetic':
    _require(
        d.num_classes > 0,
        "config.data.num_classes must be > 0 for config.data.source="
        f"'synthetic' (got {d.num_classes}).",
    )
    shape = tuple(d.synthetic_shape)
    _require(
        len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape),
        f'config.data.synthetic_shape={shape!r} must be (H, W, C) of positive'
        ' integers.',
    )
    for field in ('synthetic_train_size', 'synthetic_eval_size'):
      _require(d[field] > 0, f'config.data.{field} must be > 0.')
  _require(
      not d.random_resized_crop or d.image_size > 0,
      'config.data.random_resized_crop=True needs config.data.image_size > 0'
      ' (the output size, e.g. 224).',
  )
  _require(
      d.eval_resize == 0 or 0 < d.image_size <= d.eval_resize,
      f'config.data.eval_resize={d.eval_resize} needs 0 <'
      f' config.data.image_size <= eval_resize (got image_size='
      f'{d.image_size}); e.g. eval_resize=256, image_size=224.',
  )
  _require(
      not d.get('resize_square', False) or d.eval_resize > 0,
      'config.data.resize_square=True resizes images to eval_resize^2; set'
      ' config.data.eval_resize (e.g. 256) too.',
  )
  for field in ('mean', 'std'):
    values = d[field] if isinstance(d[field], (tuple, list)) else (d[field],)
    _require(
        all(
            isinstance(v, numbers.Real) and not isinstance(v, bool)
            and math.isfinite(v) for v in values
        ),
        f'config.data.{field}={d[field]!r} must be a tuple of finite numbers,'
        ' one per channel or one for all, e.g. (0.5,) or (0.485, 0.456,'
        ' 0.406).',
    )
  mean, std = np.atleast_1d(d.mean), np.atleast_1d(d.std)
  _require(
      mean.ndim == 1 and std.ndim == 1 and mean.size and std.size,
      'config.data.mean and config.data.std must be non-empty tuples.',
  )
  _require(
      np.all(std > 0), f'config.data.std={tuple(std)} must be all > 0.'
  )
  for field in ('batch_size', 'eval_batch_size'):
    _require(
        _is_int(config[field]) and config[field] > 0,
        f'config.{field}={config[field]!r} must be an integer > 0.',
    )
  if process_count is None:
    return
  _require(
      _is_int(process_count) and process_count > 0
      and _is_int(process_index) and 0 <= process_index < process_count,
      f'process_index={process_index} must be in [0, process_count='
      f'{process_count}).',
  )
  for field in ('batch_size', 'eval_batch_size'):
    _require(
        config[field] % process_count == 0,
        f'config.{field}={config[field]} is not divisible by the process'
        f' count {process_count}; make it a multiple of {process_count}.',
    )


# ---------------------------------------------------------------- build


def _load_sources(d):
  """(train source, eval source) for config.data ``d``."""
  if d.source == 'idx':
    return (sources_lib.idx_source(d.name, d.train_split, d.data_dir),
            sources_lib.idx_source(d.name, d.eval_split, d.data_dir))
  if d.source == 'tfds':
    return (sources_lib.TfdsSource(d.name, d.train_split, d.data_dir),
            sources_lib.TfdsSource(d.name, d.eval_split, d.data_dir))
  if d.source == 'folder':  # eval labels follow the train split's classes
    train = sources_lib.FolderSource(d.data_dir, d.train_split)
    return train, sources_lib.FolderSource(d.data_dir, d.eval_split, train.class_names)
  shape, k, seed = tuple(d.synthetic_shape), d.num_classes, d.subset_seed

  def synthetic(split):  # 'train', or any other name for the eval set
    if split == 'train':
      return sources_lib.synthetic_source('train', d.synthetic_train_size, shape, k, seed)
    return sources_lib.synthetic_source('eval', d.synthetic_eval_size, shape, k, seed)
  return synthetic(d.train_split), synthetic(d.eval_split)


def _num_classes(d, source) -> int:
  known = source.num_classes
  if d.num_classes > 0:
    _require(
        known is None or d.num_classes >= known,
        f'config.data.num_classes={d.num_classes} is smaller than the'
        f' {known} classes of {d.name!r}; use 0 to infer it.',
    )
    return d.num_classes
  _require(
      known is not None,
      f'Cannot infer the number of classes of {d.name!r}; set'
      ' config.data.num_classes.',
  )
  return known


def _image_shape(d, source) -> tuple[int, int, int]:
  h, w, c = source.image_shape
  if d.image_size > 0:
    return (d.image_size, d.image_size, c)
  _require(
      h is not None and w is not None,
      f'{d.name!r} images have variable size {source.image_shape}; set'
      ' config.data.image_size (e.g. 224).',
  )
  return (h, w, c)


def build_data(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Data:
  """Builds this process's train and eval pipelines from ``config``.

  Reads ``config.data``, ``config.batch_size``, ``config.eval_batch_size``
  and ``config.seed``. ``process_index`` / ``process_count`` default to
  ``jax.process_index()`` / ``jax.process_count()``. The config is validated
  before any data is loaded.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  validate_config(config, process_index, process_count)
  d = config.data

  train_source, eval_source = _load_sources(d)
  num_classes = _num_classes(d, train_source)
  image_shape = _image_shape(d, train_source)
  channels = image_shape[-1]
  mean = tuple(float(x) for x in np.atleast_1d(d.mean))
  std = tuple(float(x) for x in np.atleast_1d(d.std))
  _require(
      len(mean) in (1, channels) and len(std) in (1, channels),
      f'config.data.mean={mean} / config.data.std={std} must have 1 or'
      f' {channels} (channels) entries.',
  )
  _require(
      d.get('randaugment_ops', 0) == 0 or channels in (1, 3),
      f'config.data.randaugment_ops={d.randaugment_ops} needs 1- or'
      f' 3-channel images; these have {channels} channels. Set it to 0.',
  )

  if d.per_class > 0:
    indices = sources_lib.balanced_subset(
        train_source.labels, d.per_class, d.subset_seed, num_classes
    )
  else:
    indices = np.arange(len(train_source))
  if isinstance(train_source, sources_lib.ArraySource):
    labels = train_source.labels
    _require(
        labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes),
        f'Train labels span [{labels.min()}, {labels.max()}] but there are'
        f' {num_classes} classes; fix config.data.num_classes.',
    )
  steps_per_epoch = len(indices) // config.batch_size
  _require(
      steps_per_epoch > 0,
      f'config.batch_size={config.batch_size} is larger than the'
      f' {len(indices)} training examples; lower it.',
  )
  _require(
      len(eval_source) > 0,
      f'The eval split config.data.eval_split={d.eval_split!r} is empty.',
  )

  common = dict(
      process_index=process_index, process_count=process_count, mean=mean,
      std=std, num_threads=d.num_threads, prefetch=d.prefetch,
  )
  train = TrainData(
      source=train_source,
      indices=indices,
      transform=augment.make_train_transform(d),
      random=augment.uses_rng(d),
      random_erasing=float(d.get('random_erasing', 0.0)),
      seed=config.seed,
      batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch,
      **common,
  )
  evaluation = EvalData(
      source=eval_source,
      transform=augment.make_eval_transform(d),
      image_shape=image_shape,
      batch_size=config.eval_batch_size,
      **common,
  )
  info = DataInfo(
      num_classes=num_classes,
      image_shape=image_shape,
      num_train=len(indices),
      num_eval=len(eval_source),
      steps_per_epoch=steps_per_epoch,
  )
  return Data(info=info, train=train, eval=evaluation)
