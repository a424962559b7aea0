"""Image-folder data (config.data.source='folder') and the DNR paper's other
datasets (CUB-200 and Stanford Dogs through TFDS; FGVC-Aircraft and MIT67 as
folders), on small datasets the tests write."""

import os

import numpy as np
import pytest
from PIL import Image

import neurojax.data as nd
from neurojax.config import load_config_file
from test_data import make_config, take

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs')


def _write(path, rng, fmt):
  h, w = rng.integers(20, 48, size=2)
  array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)
  return array


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """root/{train,val,test}/<class>/...: 3 classes named out of sorted order,
  PNG and JPEG files, a nested folder, a grayscale PNG and a non-image file
  (skipped); test lacks class 'a_cat'. Returns (root, {path: RGB array of the
  PNGs})."""
  root = str(tmp_path_factory.mktemp('folders'))
  rng = np.random.default_rng(0)
  pngs = {}
  counts = {'train': {'c_fox': 5, 'a_cat': 4, 'b_dog': 6},
            'val': {'a_cat': 2, 'b_dog': 2, 'c_fox': 2},
            'test': {'c_fox': 3, 'b_dog': 2}}
  for split, classes in counts.items():
    for cls, n in classes.items():
      for i in range(n):
        if i % 3 == 2:
          _write(os.path.join(root, split, cls, f'{i:02d}.JPG'), rng, 'JPEG')
          continue
        sub = 'nested' if i == 1 else ''
        path = os.path.join(root, split, cls, sub, f'{i:02d}.png')
        pngs[path] = _write(path, rng, 'PNG')
  gray = os.path.join(root, 'train', 'a_cat', '99_gray.png')
  Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(gray)
  pngs[gray] = np.repeat(np.asarray(Image.open(gray))[..., None], 3, axis=-1)
  with open(os.path.join(root, 'train', 'b_dog', 'notes.txt'), 'w') as f:
    f.write('not an image')
  return root, pngs


def folder_config(root, **kw):
  return make_config(source='folder', name='toy', data_dir=root, image_size=16,
                     eval_resize=20, random_resized_crop=True, flip=True,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     batch_size=kw.pop('batch_size', 4), eval_batch_size=4, **kw)


def test_folder_source_matches_torchvision_imagefolder(folders):
  torchvision = pytest.importorskip('torchvision')
  root, pngs = folders
  source = nd.FolderSource(root, 'train')
  reference = torchvision.datasets.ImageFolder(os.path.join(root, 'train'))
  assert source.class_names == reference.classes == ['a_cat', 'b_dog', 'c_fox']
  assert source.paths == [p for p, _ in reference.samples]
  np.testing.assert_array_equal(source.labels, reference.targets)
  assert len(source) == 16 and source.num_classes == 3
  for i in range(len(source)):
    example = source[i]
    image, label = reference[i]
    assert example['label'] == label
    assert example['image'].dtype == np.uint8 and example['image'].shape[-1] == 3
    np.testing.assert_array_equal(example['image'], np.asarray(image))
    if source.paths[i] in pngs:  # lossless: the very pixels written
      np.testing.assert_array_equal(example['image'], pngs[source.paths[i]])


def test_eval_split_numbers_classes_as_the_train_split(folders):
  """test/ has no a_cat: its b_dog and c_fox keep labels 1 and 2 (a
  torchvision ImageFolder of test/ alone would call them 0 and 1)."""
  root, _ = folders
  data = nd.build_data(folder_config(root), 0, 1)
  ev = data.eval.source
  assert data.info.num_classes == 3 and data.info.num_eval == 5
  assert sorted(set(ev.labels.tolist())) == [1, 2]
  assert [os.path.relpath(p, root).split(os.sep)[1] for p in ev.paths] == ['b_dog'] * 2 + ['c_fox'] * 3
  joined = nd.FolderSource(root, 'train+val')
  assert len(joined) == 16 + 6
  assert joined.paths[:16] == nd.FolderSource(root, 'train').paths
  np.testing.assert_array_equal(joined.labels[16:], [0, 0, 1, 1, 2, 2])


def test_folder_pipeline_is_deterministic_and_sharded(folders):
  root, _ = folders
  config = folder_config(root)
  data = nd.build_data(config, 0, 1)
  assert data.info.image_shape == (16, 16, 3) and data.info.steps_per_epoch == 4
  first = take(data.train.batches(0), 5)
  again = take(nd.build_data(config, 0, 1).train.batches(0), 5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert first[0]['image'].shape == (4, 16, 16, 3)
  halves = [nd.build_data(config, p, 2).train.batch(6) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]),
                                data.train.batch(6)['image'])
  # One epoch (4 steps of 4) visits 16 distinct examples: the whole split.
  seen = np.concatenate([data.train.example_indices(k) for k in range(4)])
  assert sorted(seen.tolist()) == list(range(16))
  batches = list(data.eval.batches())
  assert sum(b['mask'].sum() for b in batches) == 5


def test_folder_errors_name_the_path_and_the_fix(folders, tmp_path):
  root, _ = folders
  with pytest.raises(nd.DataConfigError, match=r"source='folder' needs config\.data\.data_dir"):
    nd.build_data(folder_config(''), 0, 1)
  with pytest.raises(nd.DatasetNotFoundError, match=r"No folder .*nosuch.* holds \['test', 'train', 'val'\]"):
    nd.build_data(folder_config(root, eval_split='nosuch'), 0, 1)
  with pytest.raises(nd.DatasetNotFoundError, match='does not exist'):
    nd.build_data(folder_config(str(tmp_path / 'missing')), 0, 1)
  (tmp_path / 'train' / 'a').mkdir(parents=True)
  (tmp_path / 'train' / 'b').mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'train' / 'a' / 'x.png')
  with pytest.raises(nd.DatasetNotFoundError, match=r"train/b' holds no images"):
    nd.FolderSource(str(tmp_path), 'train')
  (tmp_path / 'val' / 'zebra').mkdir(parents=True)
  with pytest.raises(nd.DataConfigError, match=r"class folders \['zebra'\] that the train split"):
    nd.FolderSource(str(tmp_path), 'val', ['a', 'b'])


def test_a_corrupt_image_is_named_when_read(tmp_path):
  for cls in ('a', 'b'):
    for i in range(2):
      _write(str(tmp_path / 'train' / cls / f'{i}.png'), np.random.default_rng(i), 'PNG')
  (tmp_path / 'train' / 'b' / '1.png').write_bytes(b'\x89PNG truncated')
  source = nd.FolderSource(str(tmp_path), 'train')
  with pytest.raises(nd.ImageFileError, match=r"Cannot decode image '.*train/b/1\.png'.*remove or replace"):
    source[3]
  data = nd.build_data(folder_config(str(tmp_path), eval_split='train', batch_size=4), 0, 1)
  with pytest.raises(nd.ImageFileError, match=r"train/b/1\.png"):
    take(data.train.batches(0), 1)


# ------------------------------------------------- the DNR paper's datasets


def _fake_tfds(tfds, builder_cls, data_dir, num_classes, objects):
  """Writes a 2-split array_record dataset with the real builder's name,
  version and features (its own `_info`), a few images per split."""
  from PIL import Image as PILImage  # pylint: disable=g-import-not-at-top

  class Fake(builder_cls, skip_registration=True):
    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(6, 0), 'test': self._generate_examples(3, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        h, w = rng.integers(24, 40, size=2)
        example = {'image': PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                   'image/filename': f'{seed}_{i}.jpg', 'label': (7 * i) % num_classes}
        example.update(objects(h, w))
        yield i, example

  Fake.name = builder_cls.name
  Fake(data_dir=data_dir, file_format='array_record').download_and_prepare()


@pytest.fixture(scope='module')
def fake_cub_and_dogs(tmp_path_factory):
  tfds = pytest.importorskip('tensorflow_datasets')
  tfds.disable_progress_bar()
  data_dir = str(tmp_path_factory.mktemp('tfds_fine'))
  box = tfds.features.BBox(0.1, 0.2, 0.8, 0.9)
  _fake_tfds(tfds, tfds.builder_cls('caltech_birds2011'), data_dir, 200,
             lambda h, w: {'label_name': 'bird', 'bbox': box,
                           'segmentation_mask': Image.new('L', (w, h))})
  _fake_tfds(tfds, tfds.builder_cls('stanford_dogs'), data_dir, 120,
             lambda h, w: {'objects': {'bbox': [box]}})
  return data_dir


def _shrunk(config, data_dir):
  d = config.data
  d.data_dir, d.image_size, d.eval_resize, d.num_threads = data_dir, 16, 20, 2
  config.batch_size, config.eval_batch_size = 2, 4
  return config


@pytest.mark.parametrize('name,tfds_name,classes', [
    ('cub200', 'caltech_birds2011', 200), ('dogs', 'stanford_dogs', 120)])
def test_dnr_tfds_configs_read_their_datasets(fake_cub_and_dogs, name, tfds_name, classes):
  config = load_config_file(os.path.join(CONFIGS, f'dnr_{name}.py'))
  assert (config.data.source, config.data.name) == ('tfds', tfds_name)
  assert config.method == 'generations' and config.generations.policy == 'dnr'
  data = nd.build_data(_shrunk(config, fake_cub_and_dogs), 0, 1)
  assert (data.info.num_classes, data.info.num_train, data.info.num_eval) == (classes, 6, 3)
  batch = data.train.batch(0)
  assert batch['image'].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch['label'] % 7, 0)  # labels 7i mod classes
  assert load_config_file(os.path.join(CONFIGS, f'dnr_{name}.py'), 'ke').generations.policy == 'ke'


@pytest.mark.parametrize('name,train_split', [('aircraft', 'trainval'), ('mit67', 'train')])
def test_dnr_folder_configs_read_folders(folders, tmp_path, name, train_split):
  root, _ = folders
  os.symlink(os.path.join(root, 'train'), tmp_path / train_split)
  os.symlink(os.path.join(root, 'test'), tmp_path / 'test')
  config = load_config_file(os.path.join(CONFIGS, f'dnr_{name}.py'))
  assert config.data.source == 'folder' and config.data.train_split == train_split
  flowers = load_config_file(os.path.join(CONFIGS, 'dnr_flowers.py'))
  assert config.schedule == flowers.schedule and config.generations == flowers.generations
  data = nd.build_data(_shrunk(config, str(tmp_path)), 0, 1)
  assert (data.info.num_classes, data.info.num_train, data.info.num_eval) == (3, 16, 5)
