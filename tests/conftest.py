"""Test set-up: 8 fake CPU devices for the whole session (before jax starts)."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA compiles are the slowest part of the suite on 2 cores: share them
# between tests and the subprocesses they start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"neurojax-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope='session')
def fake_flowers(tmp_path_factory):
  """A tiny array_record 'oxford_flowers102' (variable-size RGB, 102 classes).

  It is written by a test builder with the real dataset's name, version and
  features, so build_data reads it through TFDS's own oxford_flowers102
  builder, as it would read the real one.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  splits = {'train': (204, 0), 'validation': (102, 1), 'test': (21, 2)}
  written = {}  # file_name -> image

  class FakeFlowers(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = 'oxford_flowers102'
    VERSION = tfds.core.Version('2.1.1')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=102),
          'file_name': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {k: self._generate_examples(*v) for k, v in splits.items()}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        h, w = rng.integers(40, 120, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        written[f'{seed}_{i}.png'] = image
        yield i, {'image': Image.fromarray(image), 'label': i % 102,
                  'file_name': f'{seed}_{i}.png'}

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  FakeFlowers(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir, written
