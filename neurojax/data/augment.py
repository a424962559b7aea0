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
from PIL import ImageEnhance
from PIL import ImageOps

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
  # The same float32 ops in place: no temporaries, bit-equal, 1.26x faster.
  out = images.astype(np.float32)
  out /= 255.0
  out -= mean
  out /= std
  return out


# ------------------------------------------------------------ RandAugment


def _affine(image: Image.Image, matrix, fill) -> Image.Image:
  return image.transform(image.size, Image.AFFINE, matrix, Image.BICUBIC,
                         fillcolor=fill)


def _solarize_add(image: Image.Image, v: float, fill) -> Image.Image:
  del fill
  x = np.asarray(image).astype(np.int32)
  x = np.where(x < 128, np.minimum(x + int(110 * v), 255), x)
  return Image.fromarray(x.astype(np.uint8), image.mode)


def _posterize(image: Image.Image, v: float, fill) -> Image.Image:
  del fill  # keeps the 4 - int(4 v) high bits (PIL refuses to keep 0)
  mask = (0xFF << (8 - (4 - int(4 * v)))) & 0xFF
  return Image.fromarray(np.asarray(image) & np.uint8(mask), image.mode)


def _enhance(enhancer):
  return lambda image, v, fill: enhancer(image).enhance(1.0 + 0.9 * v)


# name: (op(pil_image, v, fill), signed). v = magnitude / 10, in [0, 1], or
# in [-1, 1] for the signed ops, whose sign RandAugment draws at random.
# These are timm's `_RAND_INCREASING_TRANSFORMS` (its `-inc1` set, used by
# the DeiT/ConvNeXt recipe `rand-m9-mstd0.5-inc1`): every op's strength grows
# with the magnitude, and the geometric and enhance ops are the identity at 0.
RANDAUGMENT_OPS = {
    'AutoContrast': (lambda im, v, fill: ImageOps.autocontrast(im), False),
    'Equalize': (lambda im, v, fill: ImageOps.equalize(im), False),
    'Invert': (lambda im, v, fill: ImageOps.invert(im), False),
    'Rotate': (lambda im, v, fill: im.rotate(30 * v, Image.BICUBIC,
                                             fillcolor=fill), True),
    # Keeps 4 - int(4 v) most significant bits (4 at v=0 down to 0 at v=1).
    'Posterize': (_posterize, False),
    # Inverts pixels >= 256 - int(256 v) (none at v=0, all at v=1).
    'Solarize': (lambda im, v, fill: ImageOps.solarize(im, 256 - int(256 * v)),
                 False),
    # Adds int(110 v) to pixels < 128 (saturating at 255).
    'SolarizeAdd': (_solarize_add, False),
    'Color': (_enhance(ImageEnhance.Color), True),  # factor 1 +- 0.9 v
    'Contrast': (_enhance(ImageEnhance.Contrast), True),
    'Brightness': (_enhance(ImageEnhance.Brightness), True),
    'Sharpness': (_enhance(ImageEnhance.Sharpness), True),
    'ShearX': (lambda im, v, fill: _affine(im, (1, 0.3 * v, 0, 0, 1, 0), fill),
               True),
    'ShearY': (lambda im, v, fill: _affine(im, (1, 0, 0, 0.3 * v, 1, 0), fill),
               True),
    'TranslateXRel': (lambda im, v, fill: _affine(
        im, (1, 0, 0.45 * v * im.width, 0, 1, 0), fill), True),
    'TranslateYRel': (lambda im, v, fill: _affine(
        im, (1, 0, 0, 0, 1, 0.45 * v * im.height), fill), True),
}


def _to_pil(image: np.ndarray) -> Image.Image:
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ValueError(
        f'RandAugment needs 1- or 3-channel images, got {channels} channels'
        ' (set config.data.randaugment_ops=0).')
  return Image.fromarray(image[..., 0] if channels == 1 else image)


def _from_pil(pil: Image.Image) -> np.ndarray:
  image = np.asarray(pil)
  return image[..., None] if image.ndim == 2 else image


def _fill_color(fill: Sequence[int], channels: int):
  fill = [int(f) for f in np.broadcast_to(fill, (channels,))]
  return fill[0] if channels == 1 else tuple(fill)


def randaugment_op(
    image: np.ndarray, name: str, magnitude: float,
    fill: Sequence[int] = (128,),
) -> np.ndarray:
  """Applies RandAugment op ``name`` of RANDAUGMENT_OPS at ``magnitude``.

  ``magnitude`` is in [0, 10] (negative mirrors the signed ops); ``fill``
  colours the pixels that geometric ops uncover (length 1 or C).
  """
  op, _ = RANDAUGMENT_OPS[name]
  fill = _fill_color(fill, image.shape[-1])
  return _from_pil(op(_to_pil(image), magnitude / 10, fill))


def randaugment(
    image: np.ndarray,
    num_ops: int,
    magnitude: float,
    rng: np.random.Generator,
    magnitude_std: float = 0.0,
    prob: float = 0.5,
    fill: Sequence[int] = (128,),
) -> np.ndarray:
  """RandAugment (Cubuk et al. 2020) in timm's form, on uint8 [H, W, 1 or 3].

  Draws ``num_ops`` ops uniformly with replacement from RANDAUGMENT_OPS and
  applies each in turn with probability ``prob``, at a magnitude drawn from
  ``normal(magnitude, magnitude_std)`` (exactly ``magnitude`` if the std is
  0) clipped to [0, 10], with a random sign for the signed ops.
  """
  names = list(RANDAUGMENT_OPS)
  fill = _fill_color(fill, image.shape[-1])
  pil = None
  for k in rng.integers(0, len(names), size=num_ops):
    if rng.random() >= prob:
      continue
    m = rng.normal(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
    m = min(max(float(m), 0.0), 10.0)
    op, signed = RANDAUGMENT_OPS[names[k]]
    if signed and rng.random() < 0.5:
      m = -m
    pil = op(_to_pil(image) if pil is None else pil, m / 10, fill)
  return image if pil is None else _from_pil(pil)


def random_erasing(
    image: np.ndarray, prob: float, rng: np.random.Generator
) -> np.ndarray:
  """Random erasing (Zhong et al. 2020), timm's ``mode='pixel'``, one box.

  For a normalised float image [H, W, C]: with probability ``prob``, tries
  10 times to draw a box of area ``uniform(0.02, 1/3) * H * W`` and aspect
  ratio ``exp(uniform(log 0.3, log 1/0.3))`` that fits strictly inside the
  image, and fills the first that does with per-pixel N(0, 1) values.
  Returns a new array if a box was erased, else ``image`` itself.
  """
  if prob <= 0 or rng.random() >= prob:
    return image
  h, w, c = image.shape
  for _ in range(10):
    area = h * w * rng.uniform(0.02, 1 / 3)
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    eh = int(round(math.sqrt(area * aspect)))
    ew = int(round(math.sqrt(area / aspect)))
    if 0 < eh < h and 0 < ew < w:
      top = int(rng.integers(0, h - eh + 1))
      left = int(rng.integers(0, w - ew + 1))
      image = image.copy()
      image[top:top + eh, left:left + ew] = rng.standard_normal(
          (eh, ew, c), dtype=np.float32)
      return image
  return image


# ------------------------------------------------- transforms from config


def uses_rng(data_config) -> bool:
  """Whether the training transform of ``config.data`` is random."""
  return bool(
      data_config.crop_padding > 0
      or data_config.flip
      or data_config.random_resized_crop
      or data_config.get('randaugment_ops', 0) > 0
      or data_config.get('random_erasing', 0.0) > 0
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
  3. ``flip``: random horizontal flip;
  4. ``randaugment_ops > 0``: ``randaugment`` with that many ops,
     ``randaugment_magnitude`` and ``randaugment_magnitude_std``, per-op
     probability 0.5, filling uncovered pixels with ``round(255 * mean)``
     (timm's ``img_mean``).

  Random erasing (``random_erasing``) acts on the normalised image, so the
  pipeline applies it after this transform and ``normalize``. The returned
  ``transform(image, rng)`` accepts ``rng=None`` when
  ``uses_rng(data_config)`` is False.
  """
  size, padding = data_config.image_size, data_config.crop_padding
  rrc, flip = data_config.random_resized_crop, data_config.flip
  geometry = make_eval_transform(data_config)
  square = data_config.eval_resize if data_config.get('resize_square', False) else 0
  ra_ops = data_config.get('randaugment_ops', 0)
  ra_magnitude = data_config.get('randaugment_magnitude', 9.0)
  ra_std = data_config.get('randaugment_magnitude_std', 0.5)
  fill = [min(255, round(255 * m)) for m in np.atleast_1d(data_config.mean)]

  def transform(image, rng):
    if rrc and square:
      image = resize(image, square, square)
    image = random_resized_crop(image, size, rng) if rrc else geometry(image)
    if padding > 0:
      image = random_crop_with_padding(image, padding, rng)
    if flip:
      image = random_flip(image, rng)
    if ra_ops > 0:
      image = randaugment(image, ra_ops, ra_magnitude, rng, ra_std, fill=fill)
    return image

  return transform
