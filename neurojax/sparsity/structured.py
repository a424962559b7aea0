"""Structured pruning: whole channels, and slimming a pruned model.

A model declares its prunable channels as `ChannelGroup`s (see
`neurojax.models.channel_groups`): a conv whose output channel c is pruned
takes index c of its norm's scale, bias and running stats, and of the next
conv's inputs, with it. Pruned channels are masked in all of those params, so
the channel's activation is exactly 0 (conv 0, then BN with scale = bias = 0)
and `slim` can cut it out: the slimmed dense model gives the same logits.

    groups = models.channel_groups(name, model)
    masks = group_masks(params, groups)                      # all True
    masks = fpgm_channels(params, masks, groups, density=0.6)
    slim_vars, widths = slim(variables, masks, groups)       # smaller arrays
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from neurojax.models.registry import ChannelGroup
from neurojax.sparsity.scores import filter_distances
from neurojax.sparsity.select import keep_count, top_k_mask
from neurojax.tree import path_str

_PARAMS = "params/"


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: dict):
  return traverse_util.unflatten_dict(flat, sep="/")


def _members(group: ChannelGroup):
  """(path, axis) of every leaf the group's channels index."""
  return [(group.producer, -1), *group.followers]


def _param_members(group: ChannelGroup):
  return [(p[len(_PARAMS):], a) for p, a in _members(group) if p.startswith(_PARAMS)]


def _producer(flat_params_tree: dict, group: ChannelGroup):
  """The group's producer leaf in a flattened params-shaped tree."""
  return flat_params_tree[group.producer[len(_PARAMS):]]


def _alive(flat_masks: dict, group: ChannelGroup):
  m = _producer(flat_masks, group)
  return jnp.any(m, axis=tuple(range(m.ndim - 1)))


def group_masks(params, groups: list[ChannelGroup]):
  """All-True masks on every param leaf a group touches; None elsewhere."""
  paths = {p for g in groups for p, _ in _param_members(g)}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.ones(x.shape, jnp.bool_) if path_str(path) in paths else None, params)


def alive_channels(masks, group: ChannelGroup):
  """bool [C]: the group's channels that are not pruned."""
  return _alive(_flat(masks), group)


def channel_masks(params, groups: list[ChannelGroup], keeps):
  """Masks that prune channel c of group i wherever `keeps[i][c]` is False."""
  flat = _flat(group_masks(params, groups))
  for group, keep in zip(groups, keeps):
    for path, axis in _param_members(group):
      m = flat[path]
      shape = [1] * m.ndim
      shape[axis] = -1
      flat[path] = m & jnp.reshape(jnp.asarray(keep, jnp.bool_), shape)
  return _unflat(flat)


def fpgm_channels(params, masks, groups: list[ChannelGroup], density: float):
  """FPGM (He et al. 2019) per group: keep the round(density * C) channels
  (at least 1) whose filters are farthest from the others, i.e. drop those
  nearest the geometric median. Distances are over the channels still alive,
  and a pruned channel never comes back."""
  flat, flat_masks = _flat(params), _flat(masks)
  keeps = []
  for group in groups:
    alive = _alive(flat_masks, group)
    scores = jnp.where(alive, filter_distances(_producer(flat, group), alive), -jnp.inf)
    keeps.append(top_k_mask(scores, max(1, keep_count(density, scores.size))))
  return channel_masks(params, groups, keeps)


def slim(variables, masks, groups: list[ChannelGroup]):
  """Cuts the pruned channels out of `variables` ({"params": ..., and e.g.
  "batch_stats": ...}). Returns (slim variables, kept width of each group)."""
  flat, flat_masks = _flat(jax.device_get(variables)), _flat(masks)
  widths = []
  for group in groups:
    idx = np.flatnonzero(np.asarray(_alive(flat_masks, group)))
    for path, axis in _members(group):
      if path in flat:
        flat[path] = np.take(np.asarray(flat[path]), idx, axis=axis)
    widths.append(len(idx))
  return _unflat(flat), widths


def export(directory: str, model_spec: dict, variables) -> str:
  """Writes a slimmed model: `model.json` ({"name", "num_classes",
  "options"}: `get_model(name, num_classes=..., **options)` rebuilds it;
  other keys, e.g. "image_shape", are kept for the reader) and
  `variables.npz`. Returns the directory."""
  os.makedirs(directory, exist_ok=True)
  flat = {k: np.asarray(v) for k, v in _flat(jax.device_get(variables)).items()}
  np.savez(os.path.join(directory, "variables.npz"), **flat)
  with open(os.path.join(directory, "model.json"), "w") as f:
    json.dump(model_spec, f, indent=1)
  return directory


def load_exported(directory: str):
  """(model, variables) from `export`."""
  from neurojax import models  # pylint: disable=g-import-not-at-top
  with open(os.path.join(directory, "model.json")) as f:
    spec = json.load(f)
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()}
  model = models.get_model(spec["name"], num_classes=spec["num_classes"], **options)
  with np.load(os.path.join(directory, "variables.npz")) as npz:
    variables = _unflat({k: jnp.asarray(npz[k]) for k in npz.files})
  return model, variables
