"""Host-side image augmentations: pure numpy/PIL functions on uint8 [H, W, C].

Random functions take an explicit ``np.random.Generator``; the pipeline makes
one per training example from (seed, epoch, position), so results do not
depend on thread scheduling or on the number of processes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image

TrainTransform = Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
EvalTransform = Callable[[np.ndarray], np.ndarray]


def resize(
    image: np.ndarray,
    height: int,
    width: int,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
  """Bilinear (antialiased) resize of uint8 [H, W, C] to [height, width, C].

  ``box`` = (left, top, right, bottom) in source pixels resizes only that
  region (a crop and a resize in one interpolation).
  """
  def one(channels: np.ndarray) -> np.ndarray:
    pil = Image.fromarray(channels)
    return np.asarray(pil.resize((width, height), Image.BILINEAR, box=box))

  channels = image.shape[-1]
  if channels == 3:
    return one(image)
  # PIL has no mode for other channel counts: resize channel by channel.
  return np.stack([one(image[..., c]) for c in range(channels)], axis=-1)


def random_crop_with_padding(
    image: np.ndarray, padding: int, rng: np.random.Generator
) -> np.ndarray:
  """Zero-pads ``padding`` px on each side, then crops a random H x W window.

  The result is the image shifted by (dy, dx) in [-padding, padding]^2 with
  zeros filling the uncovered border.
  """
  if padding <= 0:
    return image
  h, w, c = image.shape
  padded = np.zeros((h + 2 * padding, w + 2 * padding, c), image.dtype)
  padded[padding:padding + h, padding:padding + w] = image
  top = rng.integers(0, 2 * padding + 1)  # two scalar draws: much faster
  left = rng.integers(0, 2 * padding + 1)  # than one draw of size=2
  return padded[top:top + h, left:left + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Flips left-right with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """Inception-style crop: random area and aspect ratio, resized to size^2.

  Tries 10 times to draw a crop of area ``uniform(*scale) * H * W`` and
  aspect ratio w/h = ``exp(uniform(log ratio))`` that fits in the image; if
  none fits, takes the largest central crop with a ratio clamped to
  ``ratio``.
  """
  h, w = image.shape[:2]
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(area * aspect)))
    ch = int(round(math.sqrt(area / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      break
  else:
    if w / h < ratio[0]:
      cw, ch = w, min(h, int(round(w / ratio[0])))
    elif w / h > ratio[1]:
      cw, ch = min(w, int(round(h * ratio[1]))), h
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  return resize(image, size, size, box=(left, top, left + cw, top + ch))


def resize_shorter_and_center_crop(
    image: np.ndarray, resize_to: int, crop: int
) -> np.ndarray:
  """Resizes the shorter side to ``resize_to`` (keeping the aspect ratio),
  then takes the central crop x crop window (e.g. 256 -> 224)."""
  h, w = image.shape[:2]
  if h <= w:
    nh, nw = resize_to, max(resize_to, int(round(w * resize_to / h)))
  else:
    nh, nw = max(resize_to, int(round(h * resize_to / w))), resize_to
  image = resize(image, nh, nw)
  top, left = (nh - crop) // 2, (nw - crop) // 2
  return image[top:top + crop, left:left + crop]


def normalize(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """uint8 [..., C] -> float32 ``(pixel / 255 - mean) / std`` per channel.

  ``mean`` and ``std`` are in [0, 1] pixel scale, of length C or 1.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return (images.astype(np.float32) / 255.0 - mean) / std


# ------------------------------------------------- transforms from config


def uses_rng(data_config) -> bool:
  """Whether the training transform of ``config.data`` is random."""
  return bool(
      data_config.crop_padding > 0
      or data_config.flip
      or data_config.random_resized_crop
  )


def make_eval_transform(data_config) -> EvalTransform:
  """Deterministic geometry shared by eval (and non-RRC training).

  With ``eval_resize > 0``: resize the shorter side to it (or, with
  ``resize_square``, the whole image to eval_resize^2, as the KE and DNR
  loaders do), then centre-crop ``image_size``. Else with ``image_size > 0``:
  resize to image_size^2 (if not already). Else: identity.
  """
  size, eval_resize = data_config.image_size, data_config.eval_resize
  square = data_config.get('resize_square', False)

  def transform(image: np.ndarray) -> np.ndarray:
    if eval_resize > 0 and square:
      image = resize(image, eval_resize, eval_resize)
      top = left = (eval_resize - size) // 2
      return image[top:top + size, left:left + size]
    if eval_resize > 0:
      return resize_shorter_and_center_crop(image, eval_resize, size)
    if size > 0 and image.shape[:2] != (size, size):
      return resize(image, size, size)
    return image

  return transform


def make_train_transform(data_config) -> TrainTransform:
  """Training augmentation from ``config.data``, in this order:

  1. ``random_resized_crop`` to image_size if set (of the eval_resize^2
     image with ``resize_square``), else the eval geometry;
  2. ``crop_padding > 0``: random crop with zero padding;
  3. ``flip``: random horizontal flip.

  The returned ``transform(image, rng)`` accepts ``rng=None`` when
  ``uses_rng(data_config)`` is False.
  """
  size, padding = data_config.image_size, data_config.crop_padding
  rrc, flip = data_config.random_resized_crop, data_config.flip
  geometry = make_eval_transform(data_config)
  square = data_config.eval_resize if data_config.get('resize_square', False) else 0

  def transform(image, rng):
    if rrc and square:
      image = resize(image, square, square)
    image = random_resized_crop(image, size, rng) if rrc else geometry(image)
    if padding > 0:
      image = random_crop_with_padding(image, padding, rng)
    if flip:
      image = random_flip(image, rng)
    return image

  return transform
