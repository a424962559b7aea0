"""Selection: from scores to masks.

Every function returns a mask pytree (True = keep) shaped like the scores'
params. Ties are broken deterministically: among equal scores the entry
that comes first (tree order, then row-major position) is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from neurojax.sparsity.masks import is_none, map_masked


def keep_count(density: float, n: int) -> int:
  if not 0.0 <= density <= 1.0:
    raise ValueError(f"density={density} must be in [0, 1] (the fraction of weights kept)")
  return int(round(density * n))


def top_k_mask(flat, k: int):
  order = jnp.argsort(-flat, stable=True)        # stable: earlier index wins a tie
  return jnp.zeros(flat.shape, jnp.bool_).at[order[:k]].set(True)


def global_topk(scores, density: float):
  """Keeps exactly round(density * N) entries over all scored leaves."""
  leaves, treedef = jax.tree.flatten(scores, is_leaf=is_none)
  real = [s for s in leaves if s is not None]
  flat = jnp.concatenate([jnp.ravel(s).astype(jnp.float32) for s in real])
  keep = top_k_mask(flat, keep_count(density, flat.size))
  out, offset = [], 0
  for s in leaves:
    if s is None:
      out.append(None)
      continue
    out.append(keep[offset:offset + s.size].reshape(s.shape))
    offset += s.size
  return jax.tree.unflatten(treedef, out)


def per_layer_topk(scores, density: float):
  """Keeps exactly round(density * n) entries of each scored leaf."""
  return map_masked(
      lambda s: top_k_mask(jnp.ravel(s).astype(jnp.float32),
                            keep_count(density, s.size)).reshape(s.shape), scores)


def std_threshold(params, masks, quality: float):
  """Han et al.'s rule: per layer keep |w| > quality * std(w) (of the
  currently kept weights)."""
  def rule(m, w):
    kept = jnp.where(m, w, 0.0)
    n = jnp.maximum(jnp.sum(m), 1)
    mean = jnp.sum(kept) / n
    std = jnp.sqrt(jnp.sum(jnp.where(m, (w - mean) ** 2, 0.0)) / n)
    return m & (jnp.abs(w) > quality * std)
  return map_masked(rule, masks, params)


def channels(channel_scores, masks, density: float):
  """Structured selection: per layer keep the round(density * C) output
  channels (last axis) with the highest scores; whole filters are kept or
  dropped. `channel_scores` has one [C] array per masked leaf."""
  def rule(m, s):
    keep = top_k_mask(s.astype(jnp.float32), max(1, keep_count(density, s.size)))
    return m & jnp.broadcast_to(keep, m.shape)
  return map_masked(rule, masks, channel_scores)


def intersect(a, b):
  """Entrywise AND of two masks (e.g. a new selection within the old mask)."""
  return map_masked(lambda x, y: x & y, a, b)


def count(masks) -> tuple[int, int]:
  """(kept, total) entries over all masked leaves."""
  leaves = [np.asarray(m) for m in jax.tree.leaves(masks)]
  return int(sum(m.sum() for m in leaves)), int(sum(m.size for m in leaves))
