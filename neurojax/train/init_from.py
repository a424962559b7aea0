"""Start a run from another run's or a converted checkpoint's weights.

`config.init_from=DIR` names either a neurojax workdir (its newest
checkpoint, read-only: `load_run`) or a directory written by
`python -m neurojax.convert.torchvision` (variables + meta.json). When the
new workdir has no checkpoint to resume from, the fresh state's params and
BatchNorm statistics are replaced by the source's, leaf by leaf: a leaf that
is missing, unexpected or of another shape is an error that names it.
`config.init_from_exclude` (a regex on leaf paths such as
`params/fc/kernel`) keeps the fresh init of the leaves it matches, e.g.
`^params/fc/` to fine-tune on a dataset with another number of classes;
the source's leaves it matches are ignored. The optimizer state starts
fresh; a model EMA starts at the loaded weights.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from neurojax.train.checkpoint import CheckpointError
from neurojax.tree import path_str


class InitFromError(CheckpointError):
  """config.init_from names no usable source, or its weights do not fit."""


def shapes(tree, prefix: str = "") -> dict:
  """{"a/b/kernel": shape} of a pytree of arrays (or shapes)."""
  return {prefix + path_str(p): tuple(jnp.shape(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_fit(want: dict, have: dict, source: str, hint: str, error=InitFromError) -> None:
  """Raises `error` naming the first leaf path whose shape differs between
  `want` (the model's, {path: shape}) and `have` (the source's). The one
  leaf check of every "start from these weights" (init_from, the Kakuritsu
  backbone, MOPED)."""
  for path in sorted(set(want) | set(have)):
    if want.get(path) != have.get(path):
      what = ("missing" if path not in have else "unexpected" if path not in want
              else f"of shape {have[path]}, not {want[path]}")
      raise error(f"{source}: {path} is {what} for this config's model ({hint})")


def is_source(path: str) -> bool:
  return os.path.exists(os.path.join(path, "config.json")) or os.path.exists(
      os.path.join(path, "meta.json"))


def check_source(path: str, field: str = "config.init_from") -> None:
  """Fails (one line) unless `path` is a workdir or a converted checkpoint."""
  if not os.path.isdir(path) or not is_source(path):
    raise InitFromError(
        f"{field}={path!r} is neither a neurojax workdir (config.json) nor a converted "
        f"checkpoint (meta.json of python -m neurojax.convert.torchvision); check the path")


def load_variables(path: str, field: str = "config.init_from") -> dict:
  """{"params": ..., "batch_stats": ...} (host or device arrays) of `path`."""
  check_source(path, field)
  if os.path.exists(os.path.join(path, "config.json")):
    from neurojax.train.experiment import load_run  # pylint: disable=g-import-not-at-top
    _, _, state = load_run(path)
    return {"params": state.params, "batch_stats": state.batch_stats or {}}
  from neurojax.convert import torchvision as tv  # pylint: disable=g-import-not-at-top
  variables, _ = tv.load(path)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _fitting(state, variables: dict, source: str, exclude: str) -> set:
  """The leaf paths ("params/fc/kernel") to copy; raises InitFromError naming
  a misfit."""
  keep = re.compile(exclude) if exclude else None

  def kept(tree, collection):
    return {p: s for p, s in shapes(tree or {}, collection + "/").items()
            if not (keep and keep.search(p))}

  want, have = {}, {}
  for name in ("params", "batch_stats"):
    want.update(kept(getattr(state, name), name))
    have.update(kept(variables.get(name), name))
  check_fit(want, have, source,
            "is config.model the source's? config.init_from_exclude keeps the fresh init of "
            "the leaves it matches, e.g. '^params/fc/' for a new number of classes")
  return set(want)


def check(state, variables: dict, source: str, exclude: str = "") -> None:
  """Raises InitFromError unless `variables` fit `state` (arrays or shapes)."""
  _fitting(state, variables, source, exclude)


def apply(state, variables: dict, source: str, exclude: str = ""):
  """`state` with the params and batch_stats of `variables` (checked leaf by
  leaf), except the leaves whose path `exclude` matches."""
  copy = _fitting(state, variables, source, exclude)
  new = {}
  for name in ("params", "batch_stats"):
    tree = getattr(state, name)
    if not tree:
      new[name] = tree
      continue
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    theirs = traverse_util.flatten_dict(dict(variables.get(name) or {}), sep="/")
    for path, old in flat.items():
      if f"{name}/{path}" in copy:
        flat[path] = jnp.asarray(jax.device_get(theirs[path]), old.dtype)
    new[name] = traverse_util.unflatten_dict(flat, sep="/")
  return state.replace(**new)


def initial(config, then=None, variables: dict | None = None):
  """setup's `initial(state) -> state` for config.init_from (None when it is
  empty and `then` is None), followed by `then` (a method's own).
  `variables`: the source's, if already loaded."""
  source = config.get("init_from", "")
  if not source:
    return then

  def load(state):
    theirs = variables if variables is not None else load_variables(source)
    state = apply(state, theirs, source, config.get("init_from_exclude", ""))
    return then(state) if then is not None else state
  return load
