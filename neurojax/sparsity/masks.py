"""Masks: pytrees shaped like the params.

A mask leaf is a bool array of the param's shape (True = keep), or None for
"not masked". By default conv and dense kernels are masked and biases and
norm parameters are not; `include`/`exclude` regexes on the '/'-joined param
path (e.g. `conv1/kernel`) change that.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from neurojax.tree import path_str

DEFAULT_INCLUDE = r"(^|/)kernel$"


def is_none(x) -> bool:
  return x is None


def map_masked(fn, masks, *trees):
  """`fn(mask, *leaves)` on every masked leaf; None where not masked."""
  return jax.tree.map(lambda m, *xs: None if m is None else fn(m, *xs), masks, *trees,
                      is_leaf=is_none)


def dense_masks(params, include: str = DEFAULT_INCLUDE, exclude: str = ""):
  """All-True masks on the eligible leaves (default: conv and dense kernels)."""
  inc = re.compile(include)
  exc = re.compile(exclude) if exclude else None

  def leaf(path, x):
    p = path_str(path)
    if inc.search(p) and not (exc and exc.search(p)):
      return jnp.ones(x.shape, jnp.bool_)
    return None
  return jax.tree_util.tree_map_with_path(leaf, params)


def apply(params, masks):
  """`params * masks`: pruned entries become exactly 0; unmasked leaves pass."""
  return jax.tree.map(lambda m, w: w if m is None else jnp.where(m, w, jnp.zeros_like(w)),
                      masks, params, is_leaf=is_none)


def regenerate(params, masks, fresh_params):
  """`mask * w + (1 - mask) * fresh`: kept entries stay bit-identical, pruned
  ones are redrawn from `fresh_params` (e.g. the model's initialisers with a
  new key). Unmasked leaves keep their values."""
  return jax.tree.map(lambda m, w, f: w if m is None else jnp.where(m, w, f),
                      masks, params, fresh_params, is_leaf=is_none)


def fill(masks, value=True):
  """Replaces None leaves by `value`, so the tree matches the params exactly."""
  return jax.tree.map(lambda m: value if m is None else m, masks, is_leaf=is_none)
