"""Tests of neurojax.data: sources, augmentations and the grain pipelines."""

import gzip
import os
import re
import time

import chex
import ml_collections
import numpy as np
import pytest

from neurojax import data as nd
from neurojax.data import augment

FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def make_config(batch_size=16, eval_batch_size=32, seed=0, **data):
  """A full config with the documented config.data defaults, overridden."""
  defaults = dict(
      source='idx', name='fashion_mnist', data_dir='', train_split='train',
      eval_split='test', per_class=0, subset_seed=0, num_classes=0,
      image_size=0, crop_padding=0, flip=False, random_resized_crop=False,
      eval_resize=0, resize_square=False, mean=(0.0,), std=(1.0,), synthetic_train_size=512,
      synthetic_eval_size=128, synthetic_shape=(8, 8, 1), num_threads=2,
      prefetch=2, randaugment_ops=0, randaugment_magnitude=9.0,
      randaugment_magnitude_std=0.5, random_erasing=0.0)
  defaults.update(data)
  return ml_collections.ConfigDict(dict(
      data=defaults, batch_size=batch_size, eval_batch_size=eval_batch_size,
      seed=seed))


def synthetic_config(**kw):
  """Small synthetic data with augmentation on (so the RNG is exercised)."""
  data = dict(source='synthetic', num_classes=4, synthetic_train_size=64,
              synthetic_eval_size=50, synthetic_shape=(6, 5, 2),
              crop_padding=2, flip=True, mean=(0.5, 0.25), std=(0.5, 2.0))
  data.update(kw.pop('data', {}))
  return make_config(**kw, **data)


def take(iterator, n):
  out = [next(iterator) for _ in range(n)]
  iterator.close()
  return out


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    chex.assert_trees_all_equal(x, y)


# ------------------------------------------------------------------ IDX


def write_idx(path, array, compress):
  codes = {np.dtype('uint8'): 0x08, np.dtype('int16'): 0x0B,
           np.dtype('float32'): 0x0D}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  raw = header + array.astype(array.dtype.newbyteorder('>')).tobytes()
  with (gzip.open if compress else open)(path, 'wb') as f:
    f.write(raw)


def write_idx_dataset(folder, n_train=40, n_test=12, compress=True):
  rng = np.random.default_rng(0)
  suffix = '.gz' if compress else ''
  arrays = {}
  for split, stem, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
    images = rng.integers(0, 256, (n, 7, 5), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(f'{folder}/{stem}-images-idx3-ubyte{suffix}', images, compress)
    write_idx(f'{folder}/{stem}-labels-idx1-ubyte{suffix}', labels, compress)
    arrays[split] = (images, labels)
  return arrays


@pytest.mark.parametrize('compress', [True, False])
@pytest.mark.parametrize('dtype', ['uint8', 'int16', 'float32'])
def test_read_idx_roundtrip(tmp_path, compress, dtype):
  array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
  path = tmp_path / 'x-idx3'
  write_idx(path, array, compress)
  out = nd.read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.dtype.isnative
  np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize('compress', [True, False])
def test_read_idx_truncated_names_file(tmp_path, compress):
  good = tmp_path / 'good'
  write_idx(good, np.ones((4, 3, 3), np.uint8), compress=False)
  raw = good.read_bytes()[:-5]
  bad = tmp_path / 'bad-images-idx3-ubyte'
  bad.write_bytes(gzip.compress(raw)[:-9] if compress else raw)
  with pytest.raises(nd.IdxFormatError, match='bad-images-idx3-ubyte'):
    nd.read_idx(bad)


def test_read_idx_bad_magic(tmp_path):
  path = tmp_path / 'notidx'
  path.write_bytes(b'\x01\x02\x08\x01' + bytes(8))
  with pytest.raises(nd.IdxFormatError, match='not an IDX file'):
    nd.read_idx(path)


@pytest.mark.parametrize('compress', [True, False])
def test_idx_pipeline_on_tiny_files(tmp_path, compress):
  arrays = write_idx_dataset(tmp_path, compress=compress)
  config = make_config(name='mnist', data_dir=str(tmp_path), batch_size=8,
                       eval_batch_size=5, mean=(0.5,), std=(0.25,))
  data = nd.build_data(config, 0, 1)
  assert data.info == nd.DataInfo(num_classes=10, image_shape=(7, 5, 1),
                                  num_train=40, num_eval=12, steps_per_epoch=5)
  batch = data.train.batch(0)
  idx = data.train.example_indices(0)
  images, labels = arrays['train']
  expected = (images[idx][..., None] / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(batch['image'], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(batch['label'], labels[idx])
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST),
                    reason='dataset-fashion-mnist is not installed')
def test_real_fashion_mnist():
  train = nd.idx_source('fashion_mnist', 'train')
  test = nd.idx_source('fashion_mnist', 'test')
  assert train.images.shape == (60000, 28, 28, 1)
  assert test.images.shape == (10000, 28, 28, 1)
  assert train.images.dtype == np.uint8
  np.testing.assert_array_equal(np.unique(train.labels), np.arange(10))
  np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
  info = nd.build_data(make_config(batch_size=128), 0, 1).info
  assert info.num_classes == 10 and info.image_shape == (28, 28, 1)
  assert info.steps_per_epoch == 60000 // 128


# --------------------------------------------------------------- errors


def test_missing_idx_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(nd.DatasetNotFoundError) as e:
    nd.build_data(make_config(data_dir=str(tmp_path / 'nowhere')), 0, 1)
  assert 'apt-get install dataset-fashion-mnist' in str(e.value)
  assert 'config.data.data_dir' in str(e.value)
  assert isinstance(e.value, FileNotFoundError)


def test_missing_tfds_dataset_says_how_to_build_it(tmp_path):
  config = make_config(source='tfds', name='oxford_flowers102',
                       data_dir=str(tmp_path), image_size=224)
  with pytest.raises(nd.DatasetNotFoundError) as e:
    nd.build_data(config, 0, 1)
  message = str(e.value)
  assert 'tfds build oxford_flowers102 --file_format=array_record' in message
  assert f'--data_dir={tmp_path}' in message
  assert 'config.data.data_dir' in message


@pytest.mark.parametrize('overrides, pattern', [
    (dict(source='foo'),
     "config.data.source='foo' is not one of 'idx', 'tfds', 'folder', 'synthetic'"),
    (dict(name='cifar10'), "config.data.name='cifar10' is not one of"),
    (dict(train_split='validation'), "config.data.train_split='validation'"),
    (dict(source='synthetic'), 'config.data.num_classes must be > 0'),
    (dict(random_resized_crop=True), 'needs config.data.image_size > 0'),
    (dict(image_size=224, eval_resize=200), 'config.data.eval_resize=200'),
    (dict(crop_padding=-1), 'config.data.crop_padding=-1'),
    (dict(std=(0.0,)), 'config.data.std'),
])
def test_config_errors_name_the_field(overrides, pattern):
  with pytest.raises(nd.DataConfigError, match=pattern.replace('(', r'\(')):
    nd.build_data(make_config(**overrides), 0, 1)


def test_batch_size_must_divide_by_process_count():
  with pytest.raises(nd.DataConfigError,
                     match='config.batch_size=20 is not divisible .* 3'):
    nd.build_data(synthetic_config(batch_size=20, eval_batch_size=30), 0, 3)
  with pytest.raises(nd.DataConfigError, match='config.eval_batch_size=32'):
    nd.build_data(synthetic_config(batch_size=9), 0, 3)


def test_batch_larger_than_dataset_and_bad_mean():
  with pytest.raises(nd.DataConfigError, match='config.batch_size=128'):
    nd.build_data(synthetic_config(batch_size=128), 0, 1)
  with pytest.raises(nd.DataConfigError, match='config.data.mean'):
    nd.build_data(synthetic_config(data=dict(mean=(0.1, 0.2, 0.3))), 0, 1)


# -------------------------------------------------- determinism & shards


def test_same_seed_same_batches_different_epochs_and_seeds_differ():
  config = synthetic_config()
  train = nd.build_data(config, 0, 1).train
  spe = train.steps_per_epoch
  a = take(train.batches(0), 2 * spe)
  b = take(nd.build_data(config, 0, 1).train.batches(0), 2 * spe)
  assert_batches_equal(a, b)
  # Threads do not change results: equal to the synchronous computation.
  assert_batches_equal(a, [train.batch(s) for s in range(2 * spe)])
  # Epoch 1 visits the examples in a different order than epoch 0.
  epoch0 = np.concatenate([train.example_indices(s) for s in range(spe)])
  epoch1 = np.concatenate(
      [train.example_indices(s) for s in range(spe, 2 * spe)])
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(np.sort(epoch0), np.sort(epoch1))
  other = nd.build_data(synthetic_config(seed=1), 0, 1).train
  assert not np.array_equal(other.example_indices(0), train.example_indices(0))
  # Same example order but a different seed still changes the augmentation.
  assert not np.array_equal(other.batch(0)['image'], a[0]['image'])


def test_epoch_order_is_the_documented_permutation():
  train = nd.build_data(synthetic_config(seed=7), 0, 1).train
  b, spe = train.batch_size, train.steps_per_epoch
  perm = np.random.default_rng([7, 3]).permutation(64)[:spe * b]
  got = np.concatenate(
      [train.example_indices(s) for s in range(3 * spe, 4 * spe)])
  np.testing.assert_array_equal(got, perm)


@pytest.mark.parametrize('num_processes', [2, 4])
def test_process_shards_concatenate_to_the_global_batch(num_processes):
  config = synthetic_config(batch_size=16)
  single = nd.build_data(config, 0, 1).train
  shards = [nd.build_data(config, p, num_processes).train
            for p in range(num_processes)]
  spe = single.steps_per_epoch
  seen = []
  for step in range(spe + 1):  # a full epoch and one step of the next
    local = [take(s.batches(step), 1)[0] for s in shards]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([x[key] for x in local]), single.batch(step)[key])
    assert all(x['image'].shape[0] == 16 // num_processes for x in local)
    if step < spe:
      seen.append([s.example_indices(step) for s in shards])
  seen = np.asarray(seen)  # [step, process, local batch]
  # Disjoint and together exactly the epoch's (truncated) permutation.
  epoch = np.random.default_rng([0, 0]).permutation(64)[:spe * 16]
  np.testing.assert_array_equal(seen.reshape(-1), epoch)
  for p in range(num_processes):
    others = np.delete(seen, p, axis=1)
    assert not set(seen[:, p].ravel()) & set(others.ravel())


def test_augmentation_rng_is_the_documented_derivation():
  config = synthetic_config(seed=3)
  train = nd.build_data(config, 1, 2).train
  step = train.steps_per_epoch + 2  # epoch 1
  source = train.source
  transform = augment.make_train_transform(config.data)
  images = []
  for j, i in enumerate(train.example_indices(step)):
    position = 2 * train.batch_size + train.local_batch_size + j
    rng = np.random.default_rng([3, 1, position, 1])
    images.append(transform(source[i]['image'], rng))
  expected = nd.normalize(np.stack(images), (0.5, 0.25), (0.5, 2.0))
  np.testing.assert_array_equal(train.batch(step)['image'], expected)


def test_resume_equals_tail_across_epoch_boundary():
  train = nd.build_data(synthetic_config(), 0, 1).train
  spe = train.steps_per_epoch  # 4
  full = take(train.batches(0), 3 * spe)
  k = spe - 1  # the resumed run crosses the epoch boundary at once
  resumed = take(train.batches(start_step=k), 3 * spe - k)
  assert_batches_equal(resumed, full[k:])


# ------------------------------------------------------------------ eval


@pytest.mark.parametrize('num_processes', [1, 2])
def test_eval_covers_every_example_once_with_masked_padding(num_processes):
  config = synthetic_config(eval_batch_size=16)  # 50 examples -> 4 batches
  parts = [nd.build_data(config, p, num_processes).eval
           for p in range(num_processes)]
  assert parts[0].num_batches == 4
  batches = [list(e.batches()) for e in parts]
  assert all(len(b) == 4 for b in batches)
  merged = {key: np.concatenate([batches[p][k][key] for k in range(4)
                                 for p in range(num_processes)])
            for key in ('image', 'label', 'mask')}
  assert merged['mask'].shape == (64,) and merged['mask'].sum() == 50
  np.testing.assert_array_equal(merged['mask'], np.arange(64) < 50)
  source = parts[0].source
  np.testing.assert_array_equal(merged['label'][:50], source.labels)
  np.testing.assert_array_equal(merged['label'][50:], 0)
  np.testing.assert_array_equal(merged['image'][50:], 0)
  expected = nd.normalize(source.images, (0.5, 0.25), (0.5, 2.0))
  np.testing.assert_array_equal(merged['image'][:50], expected)


def test_eval_has_no_randomness():
  a = nd.build_data(synthetic_config(seed=0), 0, 1).eval
  b = nd.build_data(synthetic_config(seed=5), 0, 1).eval
  assert_batches_equal(list(a.batches()), list(b.batches()))
  image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), np.uint8)
  config = make_config(image_size=24, eval_resize=32, crop_padding=2,
                       flip=True).data
  transform = augment.make_eval_transform(config)
  np.testing.assert_array_equal(transform(image), transform(image.copy()))
  assert transform(image).shape == (24, 24, 3)


# ------------------------------------------------------- balanced subset


def test_balanced_subset():
  labels = np.random.default_rng(0).integers(0, 5, 300)
  idx = nd.balanced_subset(labels, 7, seed=1, num_classes=5)
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=5), [7] * 5)
  assert len(np.unique(idx)) == 35 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, nd.balanced_subset(labels, 7, 1, 5))
  assert not np.array_equal(idx, nd.balanced_subset(labels, 7, 2, 5))
  few = np.bincount(labels).min()
  with pytest.raises(nd.DataConfigError, match='per_class'):
    nd.balanced_subset(labels, few + 1, 0, 5)
  with pytest.raises(nd.DataConfigError, match='class 5 has only 0'):
    nd.balanced_subset(labels, 1, 0, num_classes=6)


def test_per_class_subset_in_pipeline():
  config = synthetic_config(batch_size=8, data=dict(per_class=5))
  data = nd.build_data(config, 0, 1)
  assert data.info.num_train == 20 and data.info.steps_per_epoch == 2
  train = data.train
  epoch = np.concatenate([train.example_indices(s) for s in range(2)])
  assert set(epoch) <= set(train.indices)
  labels = train.source.labels[train.indices]
  np.testing.assert_array_equal(np.bincount(labels), [5] * 4)
  with pytest.raises(nd.DataConfigError, match='per_class=17'):
    nd.build_data(synthetic_config(data=dict(per_class=17)), 0, 1)


# --------------------------------------------------------- augmentations


def test_random_crop_with_padding_is_a_shifted_window():
  image = np.arange(1, 6 * 7 * 2 + 1, dtype=np.uint8).reshape(6, 7, 2)
  padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
  shifts = set()
  for seed in range(60):
    out = augment.random_crop_with_padding(
        image, 3, np.random.default_rng(seed))
    assert out.shape == image.shape
    windows = [(t, l) for t in range(7) for l in range(7)
               if np.array_equal(padded[t:t + 6, l:l + 7], out)]
    assert len(windows) == 1
    shifts.add(windows[0])
  assert len(shifts) > 15  # many different offsets are drawn


def test_random_flip():
  image = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
  outs = [augment.random_flip(image, np.random.default_rng(s))
          for s in range(20)]
  flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
  kept = [np.array_equal(o, image) for o in outs]
  assert all(f or k for f, k in zip(flipped, kept))
  assert any(flipped) and any(kept)


def test_normalize():
  images = np.array([[[[0, 255, 51]]]], np.uint8)
  out = nd.normalize(images, (0.0, 0.5, 0.2), (1.0, 0.25, 0.5))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [0.0, 2.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(nd.normalize(images, (0.5,), (0.5,)),
                             (images / 255.0 - 0.5) / 0.5, rtol=1e-6)


@pytest.mark.parametrize('shape', [(300, 200, 3), (40, 90, 1), (10, 10, 2)])
def test_random_resized_crop_and_center_crop_shapes(shape):
  image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  for seed in range(5):
    out = augment.random_resized_crop(image, 32, np.random.default_rng(seed))
    assert out.shape == (32, 32, shape[2]) and out.dtype == np.uint8
  out = augment.resize_shorter_and_center_crop(image, 36, 32)
  assert out.shape == (32, 32, shape[2]) and out.dtype == np.uint8


def test_resize_is_correct_on_constant_and_centre_crop_picks_centre():
  image = np.full((20, 30, 3), 77, np.uint8)
  np.testing.assert_array_equal(augment.resize(image, 9, 13), 77)
  # Pixel value = column: the shorter side is already 10, so the centre crop
  # of a wide image is exactly columns 15..24 (rows for a tall image).
  wide = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None],
                         (10, 40, 1))
  out = augment.resize_shorter_and_center_crop(wide, 10, 10)
  np.testing.assert_array_equal(out, wide[:, 15:25])
  tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
  out = augment.resize_shorter_and_center_crop(tall, 10, 10)
  np.testing.assert_array_equal(out, tall[15:25])
  # Downscaling by 2 keeps the aspect ratio: 20x80 -> 10x40 -> centre 10x10.
  out = augment.resize_shorter_and_center_crop(
      np.repeat(np.repeat(wide, 2, 0), 2, 1), 10, 10)
  assert np.abs(out.astype(int) - wide[:, 15:25]).max() <= 1
  # Full-image crop box reproduces a plain resize.
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), np.uint8)
  np.testing.assert_array_equal(
      augment.resize(image, 8, 8, box=(0, 0, 16, 16)),
      augment.resize(image, 8, 8))


# ------------------------------------------- RandAugment, random erasing

# Ops that are the identity at magnitude 0 (timm's `-inc1` set).
IDENTITY_AT_0 = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel',
                 'TranslateYRel', 'Color', 'Contrast', 'Brightness',
                 'Sharpness', 'Solarize', 'SolarizeAdd')


@pytest.mark.parametrize('channels', [1, 3])
def test_randaugment_ops_keep_shape_and_identity_at_magnitude_0(channels):
  # Low contrast, so that AutoContrast and Equalize have work to do.
  image = np.random.default_rng(0).integers(50, 150, (24, 20, channels),
                                            np.uint8)
  assert len(augment.RANDAUGMENT_OPS) == 15
  for name, (_, signed) in augment.RANDAUGMENT_OPS.items():
    for magnitude in (0, 4.5, 10) + ((-10,) if signed else ()):
      out = augment.randaugment_op(image, name, magnitude,
                                   fill=(40, 50, 60)[:channels])
      assert out.shape == image.shape and out.dtype == np.uint8, name
    at_0 = augment.randaugment_op(image, name, 0)
    at_10 = augment.randaugment_op(image, name, 10)
    if name in IDENTITY_AT_0:
      np.testing.assert_array_equal(at_0, image, err_msg=name)
      if not (name == 'Color' and channels == 1):  # grey has no colour
        assert not np.array_equal(at_10, image), name
    else:
      assert not np.array_equal(at_0, image), name


def test_randaugment_ops_against_hand_computation():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  op = augment.randaugment_op
  np.testing.assert_array_equal(op(x, 'Invert', 3), 255 - x)
  # Solarize at magnitude 5: threshold 256 - 128 = 128.
  np.testing.assert_array_equal(op(x, 'Solarize', 5),
                                np.where(x >= 128, 255 - x, x))
  # Posterize at magnitude 5 keeps 4 - int(2.0) = 2 bits; at 10, none.
  np.testing.assert_array_equal(op(x, 'Posterize', 5), x & 0b11000000)
  np.testing.assert_array_equal(op(x, 'Posterize', 10), 0)
  np.testing.assert_array_equal(op(x, 'Posterize', 0), x & 0b11110000)
  # SolarizeAdd at magnitude 5 adds 55 below 128, saturating.
  np.testing.assert_array_equal(
      op(x, 'SolarizeAdd', 5),
      np.where(x < 128, np.minimum(x.astype(int) + 55, 255), x))
  # TranslateXRel at magnitude 10 shifts by 0.45 * 40 = 18 pixels and fills
  # the uncovered columns with `fill`; a negative magnitude shifts the other
  # way.
  rgb = np.random.default_rng(0).integers(0, 256, (6, 40, 3), np.uint8)
  out = op(rgb, 'TranslateXRel', 10, fill=(1, 2, 3))
  np.testing.assert_array_equal(out[:, :22], rgb[:, 18:])
  np.testing.assert_array_equal(out[:, 22:], np.broadcast_to([1, 2, 3],
                                                             (6, 18, 3)))
  out = op(rgb, 'TranslateXRel', -10, fill=(1, 2, 3))
  np.testing.assert_array_equal(out[:, 18:], rgb[:, :22])


def test_randaugment_is_deterministic_per_rng():
  image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)

  def run(seed, **kw):
    return augment.randaugment(image, 2, 9.0, np.random.default_rng(seed),
                               magnitude_std=0.5, **kw)

  outs = [run(s) for s in range(30)]
  for s in (0, 7):
    np.testing.assert_array_equal(run(s), outs[s])
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) > 15
  # Each op is skipped with probability 1/2, so about 1/4 are untouched.
  assert 2 <= sum(np.array_equal(o, image) for o in outs) <= 15
  # prob=1 and num_ops=0 bound the behaviour.
  assert not any(np.array_equal(run(s, prob=1.0), image) for s in range(10))
  np.testing.assert_array_equal(
      augment.randaugment(image, 0, 9.0, np.random.default_rng(0)), image)


def test_random_erasing_one_normal_box():
  h, w, c = 40, 50, 3
  image = np.full((h, w, c), 7.0, np.float32)
  rng = np.random.default_rng(0)
  assert augment.random_erasing(image, 0.0, rng) is image
  erased_values = []
  for seed in range(40):
    out = augment.random_erasing(image, 1.0, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(image, 7.0)  # the input is not modified
    changed = out != 7.0
    rows = np.flatnonzero(changed.any(axis=(1, 2)))
    cols = np.flatnonzero(changed.any(axis=(0, 2)))
    assert rows.size and cols.size, seed  # prob 1 always erases here
    box = np.zeros_like(changed)
    box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    np.testing.assert_array_equal(changed, box)  # exactly one full box
    eh, ew = len(rows), len(cols)
    slack = (eh + ew) / 2 + 0.25  # rounding of the box sides
    assert 0.02 * h * w - slack <= eh * ew <= h * w / 3 + slack
    assert eh < h and ew < w
    erased_values.append(out[changed])
  values = np.concatenate(erased_values)
  assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05
  # Probability 0.25: about a quarter of the examples are erased.
  hits = sum(augment.random_erasing(image, 0.25, np.random.default_rng(s))
             is not image for s in range(400))
  assert 60 <= hits <= 140


def test_uses_rng_with_randaugment_or_erasing():
  from neurojax.config import base_config  # pylint: disable=g-import-not-at-top
  d = base_config().data
  assert (d.randaugment_ops, d.randaugment_magnitude,
          d.randaugment_magnitude_std, d.random_erasing) == (0, 9.0, 0.5, 0.0)
  assert not augment.uses_rng(d)
  assert augment.uses_rng(make_config(randaugment_ops=2).data)
  assert augment.uses_rng(make_config(random_erasing=0.25).data)


def test_pipeline_with_randaugment_and_random_erasing():
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  config = synthetic_config(seed=2, data=dict(
      synthetic_shape=(12, 10, 3), crop_padding=0, mean=mean, std=std,
      randaugment_ops=2, randaugment_magnitude=9.0,
      randaugment_magnitude_std=0.5, random_erasing=1.0))
  data = nd.build_data(config, 0, 1)
  train = data.train
  batch = take(train.batches(0), 1)[0]
  assert batch['image'].shape == (16, 12, 10, 3)
  assert batch['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['image'],
                                nd.build_data(config, 0, 1).train.batch(0)['image'])
  # The documented derivation: transform, normalise, then erase with the
  # same per-example generator.
  step = train.steps_per_epoch + 1  # epoch 1, row 1
  transform = augment.make_train_transform(config.data)
  expected = []
  for j, i in enumerate(train.example_indices(step)):
    rng = np.random.default_rng([2, 1, train.batch_size + j, 1])
    image = nd.normalize(transform(train.source[i]['image'], rng), mean, std)
    expected.append(augment.random_erasing(image, 1.0, rng))
  np.testing.assert_array_equal(train.batch(step)['image'], np.stack(expected))
  # Without erasing, no image has an erased box: the batches differ.
  config.data.random_erasing = 0.0
  plain = nd.build_data(config, 0, 1).train.batch(step)['image']
  assert not np.array_equal(plain, np.stack(expected))
  # Eval is neither augmented nor erased.
  ev = data.eval.batch(0)
  np.testing.assert_array_equal(
      ev['image'], nd.normalize(data.eval.source.images[:32], mean, std))


@pytest.mark.parametrize('overrides, message', [
    (dict(randaugment_ops=-1), 'config.data.randaugment_ops=-1 must be an'
     ' integer >= 0'),
    (dict(randaugment_magnitude=11.0),
     'config.data.randaugment_magnitude=11.0 must be in [0, 10]'),
    (dict(randaugment_magnitude_std=-0.5),
     'config.data.randaugment_magnitude_std=-0.5 must be >= 0'),
    (dict(random_erasing=1.5),
     'config.data.random_erasing=1.5 must be a probability in [0, 1]'),
    (dict(random_erasing=-0.1), 'config.data.random_erasing=-0.1'),
])
def test_augmentation_config_errors_name_the_field(overrides, message):
  with pytest.raises(nd.DataConfigError, match=re.escape(message)):
    nd.validate_config(make_config(**overrides))


def test_randaugment_needs_1_or_3_channels():
  config = synthetic_config(data=dict(randaugment_ops=2))  # 2 channels
  with pytest.raises(nd.DataConfigError,
                     match='config.data.randaugment_ops=2 needs 1- or 3-ch'):
    nd.build_data(config, 0, 1)


# ------------------------------------------------------------------ TFDS


def flowers_config(data_dir, **kw):
  return make_config(
      source='tfds', name='oxford_flowers102', data_dir=data_dir,
      eval_split=kw.pop('eval_split', 'validation'), image_size=56,
      random_resized_crop=True, flip=True, eval_resize=64,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
      batch_size=kw.pop('batch_size', 8), eval_batch_size=16, **kw)


def test_tfds_flowers_like_dataset(fake_flowers):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir, written = fake_flowers
  config = flowers_config(data_dir)
  data = nd.build_data(config, 0, 1)
  assert data.info == nd.DataInfo(num_classes=102, image_shape=(56, 56, 3),
                                  num_train=204, num_eval=102,
                                  steps_per_epoch=25)
  source = data.train.source
  raw = tfds.data_source('oxford_flowers102', split='train', data_dir=data_dir,
                         download=False)
  for i in (0, 5, 203):
    example, name = source[i], raw[i]['file_name'].decode()
    assert example['image'].dtype == np.uint8
    np.testing.assert_array_equal(example['image'], written[name])
    assert example['label'] == int(name[:-4].split('_')[1]) % 102
  np.testing.assert_array_equal(
      source.labels, [source[i]['label'] for i in range(len(source))])
  batch = take(data.train.batches(0), 1)[0]
  assert batch['image'].shape == (8, 56, 56, 3)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  eval_batches = list(data.eval.batches())
  assert len(eval_batches) == 7 and eval_batches[0]['image'].shape == (16, 56, 56, 3)
  assert sum(b['mask'].sum() for b in eval_batches) == 102
  test = nd.build_data(flowers_config(data_dir, eval_split='test'), 0, 1)
  assert test.info.num_eval == 21


def test_tfds_augments_only_training(fake_flowers):
  config = flowers_config(fake_flowers[0])
  train = nd.build_data(config, 0, 1).train
  ev = nd.build_data(config, 0, 1).eval
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  # Eval: exactly resize-shorter-to-64 then centre-crop 56, nothing random.
  raw = [ev.source[i]['image'] for i in range(16)]
  expected = nd.normalize(np.stack(
      [augment.resize_shorter_and_center_crop(x, 64, 56) for x in raw]),
      mean, std)
  np.testing.assert_allclose(ev.batch(0)['image'], expected, atol=1e-6)
  # Train: random-resized-crop + flip, so no image is the eval view (or its
  # mirror image).
  idx = train.example_indices(0)
  eval_view = nd.normalize(np.stack(
      [augment.resize_shorter_and_center_crop(train.source[i]['image'], 64, 56)
       for i in idx]), mean, std)
  for got, view in zip(train.batch(0)['image'], eval_view):
    assert not np.allclose(got, view, atol=0.1)
    assert not np.allclose(got, view[:, ::-1], atol=0.1)
  # Per-process sharding works on TFDS too.
  halves = [nd.build_data(config, p, 2).train.batch(3) for p in range(2)]
  np.testing.assert_array_equal(
      np.concatenate([h['image'] for h in halves]), train.batch(3)['image'])


def test_tfds_per_class_and_bad_split(fake_flowers):
  data_dir = fake_flowers[0]
  data = nd.build_data(flowers_config(data_dir, per_class=2), 0, 1)
  labels = data.train.source.labels[data.train.indices]
  np.testing.assert_array_equal(np.bincount(labels), [2] * 102)
  with pytest.raises(nd.DataConfigError, match='per_class=3'):
    nd.build_data(flowers_config(data_dir, per_class=3), 0, 1)
  with pytest.raises(nd.DataConfigError, match='nosuchsplit'):
    nd.build_data(flowers_config(data_dir, eval_split='nosuchsplit'), 0, 1)


def test_dnr_flowers_config_reads_the_three_splits(fake_flowers):
  """configs/dnr_flowers.py's data section on the fake dataset (at 56 px):
  train+validation for training, test for eval, the 256x256-style square
  resize before the centre crop, augmentation only in training."""
  from neurojax.config import load_config_file  # pylint: disable=g-import-not-at-top
  config = load_config_file(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                         'dnr_flowers.py'))
  assert (config.data.name, config.data.train_split, config.data.eval_split) == (
      'oxford_flowers102', 'train', 'test')
  d = config.data
  d.data_dir, d.image_size, d.eval_resize = fake_flowers[0], 56, 64
  d.train_split, d.num_threads = 'train+validation', 2
  data = nd.build_data(config, 0, 1)
  assert data.info.num_classes == 102
  assert (data.info.num_train, data.info.num_eval) == (204 + 102, 21)
  assert data.info.steps_per_epoch == 306 // 32
  batch = data.train.batch(0)
  chex.assert_shape(batch['image'], (32, 56, 56, 3))
  raw = [data.eval.source[i]['image'] for i in range(21)]
  expected = nd.normalize(np.stack([augment.resize(x, 64, 64)[4:60, 4:60] for x in raw]),
                          d.mean, d.std)
  got = np.concatenate([b['image'][b['mask'] > 0] for b in data.eval.batches()])
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert not np.allclose(data.train.batch(0)['image'], data.train.batch(0)['image'][:, :, ::-1])
  d.eval_resize = 0
  with pytest.raises(nd.DataConfigError, match='resize_square=True.*eval_resize'):
    nd.validate_config(config)


# ------------------------------------------------------------ throughput


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST),
                    reason='dataset-fashion-mnist is not installed')
def test_fashion_mnist_train_throughput(capsys):
  config = make_config(batch_size=128, crop_padding=2, flip=True,
                       num_threads=4, prefetch=4)
  train = nd.build_data(config, 0, 1).train
  it = train.batches(0)
  next(it)  # start the threads
  start = time.perf_counter()
  for _ in range(100):
    batch = next(it)
  seconds = time.perf_counter() - start
  it.close()
  assert batch['image'].shape == (128, 28, 28, 1)
  with capsys.disabled():
    print(f'\n[data] Fashion-MNIST train pipeline (crop_padding=2, flip):'
          f' {100 * 128 / seconds:,.0f} images/s over 100 batches of 128')
  assert 100 * 128 / seconds > 500  # a loose floor: catches only disasters
