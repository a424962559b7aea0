"""Mixup and cutmix of a whole batch, on device, with an explicit key.

Each example is mixed with the batch's reverse (example i with example
B-1-i), with one lam per batch, as timm's `Mixup(mode="batch")`:
- with prob `1 - prob` nothing is mixed (lam = 1);
- else cutmix with probability `switch_prob` (when both are on):
  lam ~ Beta(cutmix_alpha, cutmix_alpha); a box of side sqrt(1 - lam) of
  each dimension, centred on a uniform pixel and clipped to the image,
  takes the reversed batch's pixels, and lam becomes the uncovered fraction;
- or mixup: lam ~ Beta(mixup_alpha, mixup_alpha);
  x <- lam x + (1 - lam) x_reversed.
The loss is then lam CE(y) + (1 - lam) CE(y_reversed) (with label smoothing:
timm's mixed smoothed targets, since cross-entropy is linear in them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enabled(cfg) -> bool:
  """Whether `config.mix` mixes anything."""
  return bool(cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and cfg.prob > 0


def cutmix_box(key, height: int, width: int, lam):
  """A bool [H, W] box covering about 1 - lam of the image, and the exact
  fraction it leaves uncovered (the corrected lam)."""
  ky, kx = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (jnp.floor(height * cut).astype(jnp.int32),
                  jnp.floor(width * cut).astype(jnp.int32))
  cy, cx = jax.random.randint(ky, (), 0, height), jax.random.randint(kx, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  return box, 1.0 - jnp.mean(box.astype(jnp.float32))


def mix_batch(key, images, cfg):
  """`images` [B, H, W, C] -> (mixed images, lam); `cfg` is `config.mix`."""
  k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(key, 5)
  reverse = images[::-1]
  one = jnp.ones((), jnp.float32)
  lam_mixup = jax.random.beta(k_mixup, cfg.mixup_alpha, cfg.mixup_alpha) \
      if cfg.mixup_alpha > 0 else one
  lam_cutmix = jax.random.beta(k_cutmix, cfg.cutmix_alpha, cfg.cutmix_alpha) \
      if cfg.cutmix_alpha > 0 else one
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
  else:
    use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
  apply = jax.random.uniform(k_apply) < cfg.prob
  lam_mixup, lam_cutmix = jnp.where(apply, lam_mixup, 1.0), jnp.where(apply, lam_cutmix, 1.0)

  def cutmix():
    box, lam = cutmix_box(k_box, images.shape[1], images.shape[2], lam_cutmix)
    return jnp.where(box[None, :, :, None], reverse, images), lam

  def mixup():
    mixed = lam_mixup * images.astype(jnp.float32) + (1 - lam_mixup) * reverse.astype(jnp.float32)
    return mixed.astype(images.dtype), lam_mixup

  return jax.lax.cond(use_cutmix, cutmix, mixup)     # only the chosen one is computed
