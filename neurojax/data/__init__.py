"""neurojax data: sources (IDX, TFDS, image folders, synthetic, arrays), augmentations and
deterministic per-process grain pipelines.

Typical use::

  data = neurojax.data.build_data(config)
  for step, batch in zip(range(start, end), data.train.batches(start)):
    ...
  for batch in data.eval.batches():  # batch['mask'] marks real examples
    ...
"""

from neurojax.data.augment import make_eval_transform
from neurojax.data.augment import make_train_transform
from neurojax.data.augment import normalize
from neurojax.data.augment import randaugment
from neurojax.data.augment import randaugment_op
from neurojax.data.augment import random_crop_with_padding
from neurojax.data.augment import random_erasing
from neurojax.data.augment import random_flip
from neurojax.data.augment import random_resized_crop
from neurojax.data.augment import resize
from neurojax.data.augment import resize_shorter_and_center_crop
from neurojax.data.pipeline import Data
from neurojax.data.pipeline import DataInfo
from neurojax.data.pipeline import EvalData
from neurojax.data.pipeline import TrainData
from neurojax.data.pipeline import build_data
from neurojax.data.pipeline import epoch_permutation
from neurojax.data.pipeline import validate_config
from neurojax.data.sources import ArraySource
from neurojax.data.sources import DataConfigError
from neurojax.data.sources import DatasetNotFoundError
from neurojax.data.sources import FolderSource
from neurojax.data.sources import ImageFileError
from neurojax.data.sources import IdxFormatError
from neurojax.data.sources import TfdsSource
from neurojax.data.sources import balanced_subset
from neurojax.data.sources import idx_source
from neurojax.data.sources import read_idx
from neurojax.data.sources import synthetic_source
