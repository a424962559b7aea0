"""Scores: pure functions from params (and data) to pytrees of saliencies.

Each returns a pytree shaped like `masks` (the eligible leaves): an array per
masked leaf, None elsewhere. Higher score = more worth keeping.
Structured scores (FPGM) have one value per output channel (the last axis).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from neurojax.sparsity.masks import is_none, map_masked
from neurojax import losses


def magnitude(params, masks):
  """|w| (Han et al. 2015)."""
  return map_masked(lambda _, w: jnp.abs(w), masks, params)


def random(key, masks):
  """Uniform random scores: random pruning, from an explicit key."""
  leaves, treedef = jax.tree.flatten(masks, is_leaf=is_none)
  keys = iter(jax.random.split(key, max(len(leaves), 1)))
  return jax.tree.unflatten(treedef, [None if m is None else
                                      jax.random.uniform(next(keys), m.shape) for m in leaves])


def snip(grad_fn, params, batches, masks, *, absolute_per_batch: bool = False):
  """SNIP saliency |w * g| (Lee et al. 2019), g accumulated over `batches`.

  `grad_fn(params, batch) -> grads` (see `ce_grad_fn`: plain CE, BN in eval
  mode). g is the sum of the batch gradients, or with
  `absolute_per_batch=True` the sum of their absolute values (the DNR code's
  variant). Pass k batches to use k.
  """
  total = None
  for batch in batches:
    g = grad_fn(params, batch)
    if absolute_per_batch:
      g = jax.tree.map(jnp.abs, g)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  if total is None:
    raise ValueError("snip needs at least one batch")
  return map_masked(lambda _, w, g: jnp.abs(w * g), masks, params, total)


def snip_batch_count(snip_batches: int, steps_per_epoch: int) -> int:
  """How many batches SNIP sums over: `snip_batches`, or with 0 the DNR
  code's ceil(steps per epoch / 32) (`config.sparsity.snip_batches`)."""
  return snip_batches or math.ceil(steps_per_epoch / 32)


def ce_grad_fn(model, batch_stats):
  """A `grad_fn` for `snip`: mean cross-entropy, BN in eval mode with
  `batch_stats`. Compiled once per model, whatever the statistics."""
  grads = _ce_grads(model)
  return lambda params, batch: grads(params, batch_stats or {}, batch)


@functools.cache
def _ce_grads(model):
  @jax.jit
  def grads(params, batch_stats, batch):
    def loss(p):
      variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
      logits = model.apply(variables, batch["image"], train=False)
      return jnp.mean(losses.cross_entropy(logits, batch["label"]))
    return jax.grad(loss)(params)
  return grads


def filter_distances(kernel, alive=None):
  """[out]: for each output channel (last axis) of `kernel`, the summed
  Euclidean distance of its filter to the other filters (those `alive`, if
  given). The filter nearest the geometric median has the smallest sum."""
  filters = kernel.reshape(-1, kernel.shape[-1]).T.astype(jnp.float32)    # [out, fan_in]
  sq = jnp.sum(filters**2, axis=1)
  dist = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * filters @ filters.T, 0.0))
  if alive is not None:
    dist = dist * alive[None, :]
  return jnp.sum(dist, axis=1)


def fpgm(params, masks):
  """FPGM (He et al. 2019): per output channel, the summed Euclidean distance
  of its filter to all other filters of the layer. Filters near the
  geometric median (small sums) are the most replaceable: the lowest scores
  are pruned first. (`structured.fpgm_channels` prunes whole channel groups.)"""
  return map_masked(lambda _, w: filter_distances(w), masks, params)


def bn_gamma(params, masks):
  """|gamma| of norm layers: `masks` should select the `scale` leaves."""
  return map_masked(lambda _, g: jnp.abs(g), masks, params)
