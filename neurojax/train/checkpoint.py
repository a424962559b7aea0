"""Orbax checkpoints of the whole train state, plus the data position.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta`
(JSON: step, data position, and a fingerprint of the state: a hash of each
leaf's bytes). Orbax writes into a temporary directory and renames it when
complete, so a half-written checkpoint is never picked up. A checkpoint that
is complete on disk but fails to load, or whose contents do not match its
fingerprint, is moved to `<workdir>/corrupt_checkpoints/` (never deleted) and
the one before it is used instead. A checkpoint whose tree or shapes differ
from the model being built is not corrupt but the wrong model: that raises
`CheckpointMismatchError` and moves nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from neurojax import parallel


class CheckpointError(RuntimeError):
  pass


class CheckpointMismatchError(CheckpointError):
  """A checkpoint's tree, shapes or dtypes differ from the state to restore into."""


# meta["fingerprint_kind"] of checkpoints whose meta["fingerprint"] holds, per
# leaf, the 128-bit blake2b of (dtype, shape, bytes) as four uint32 words.
# Checkpoints without it hold the old per-leaf (sum, sum|x|): not checked.
FINGERPRINT_KIND = "blake2b-128"


def _local_value(x):
  """A leaf as something `jax.device_get` can fetch on this process: the
  whole array (a replicated array of a multi-process run: the local copy),
  or None for an array sharded over other processes (not hashed)."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if not x.is_fully_addressable:
      return x.addressable_data(0) if x.sharding.is_fully_replicated else None
  return x


def _digest(x) -> list[int] | None:
  if x is None:
    return None
  x = np.asarray(x)
  h = hashlib.blake2b(digest_size=16)
  h.update(f"{x.dtype.name}{tuple(x.shape)}".encode())
  h.update(np.ascontiguousarray(x).tobytes())
  return np.frombuffer(h.digest(), "<u4").tolist()


def fingerprint(tree) -> list[list[int] | None]:
  """Per leaf, a hash of its dtype, shape and raw bytes (four uint32 words).

  Computed on host: exact (NaN and inf included) and independent of the
  device or the order a backend sums in. A leaf sharded over other
  processes (not replicated) has None and is not checked.
  """
  return [_digest(x) for x in jax.device_get([_local_value(x) for x in jax.tree.leaves(tree)])]


def _fingerprint_difference(state, meta: dict, step: int) -> str | None:
  """None if `state` matches the fingerprint in `meta`, else what differs."""
  saved = meta.get("fingerprint")
  if meta.get("fingerprint_kind") != FINGERPRINT_KIND:
    logging.info("checkpoint %d has an old-style fingerprint (%s); its values are not checked.",
                 step, meta.get("fingerprint_kind", "per-leaf sums"))
    return None
  paths = _leaf_paths(state)
  current = fingerprint(state)
  if not isinstance(saved, list) or len(saved) != len(current):
    return (f"it has {len(saved) if isinstance(saved, list) else 'no'} leaf hashes for "
            f"{len(current)} leaves")
  if meta.get("fingerprint_paths"):      # by path: also a state read in another leaf order
    by_path = dict(zip(meta["fingerprint_paths"], saved))
    saved = [by_path.get(p) for p in paths]
  for path, a, b in zip(paths, current, saved):
    if a is not None and b is not None and a != b:
      return f"first at {path}"
  return None


def _leaf_paths(tree) -> list[str]:
  return [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _path_name(path) -> str:
  """'params/Dense_0/kernel' for a key path (dict keys, attributes, indices)."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return "/".join(names)


def _leaf_specs(tree) -> dict[str, tuple]:
  """{path: (shape, dtype)} of a state, an abstract state, or orbax's tree metadata."""
  specs = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    specs[_path_name(path)] = (None if shape is None else tuple(shape),
                               None if dtype is None else np.dtype(dtype))
  return specs


def _describe(spec) -> str:
  shape, dtype = spec
  return f"shape {shape}" + ("" if dtype is None else f" {dtype.name}")


def tree_difference(saved_tree, target) -> str | None:
  """None if the saved tree has the leaves, shapes and dtypes of `target`,
  else the first difference (in the target's leaf order), e.g. "params/x
  has shape (4, 2) float32 in the checkpoint but (8, 2) float32 in the model"."""
  saved, wanted = _leaf_specs(saved_tree), _leaf_specs(target)
  problems = []
  for path, spec in wanted.items():
    if path not in saved:
      problems.append(f"the model has {path} ({_describe(spec)}), the checkpoint does not")
      continue
    (s_shape, s_dtype), (w_shape, w_dtype) = saved[path], spec
    if (s_shape is not None and w_shape is not None and s_shape != w_shape) or \
        (s_dtype is not None and w_dtype is not None and s_dtype != w_dtype):
      problems.append(f"{path} has {_describe(saved[path])} in the checkpoint but "
                      f"{_describe(spec)} in the model")
  problems += [f"the checkpoint has {path} ({_describe(spec)}), the model does not"
               for path, spec in saved.items() if path not in wanted]
  if not problems:
    return None
  more = len(problems) - 1
  return problems[0] + (f" (and {more} more difference{'s' * (more > 1)})" if more else "")


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """`read_only=True` (reading another, maybe live, run): creates nothing and
    leaves the temporary directories of a save in progress alone."""
    self.directory = os.path.abspath(directory)
    # Handlers registered up front, so that a new process can read a step's
    # item metadata (tree, shapes, dtypes) before restoring anything.
    registry = ocp.handlers.create_default_handler_registry(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
    self._manager = ocp.CheckpointManager(
        self.directory, handler_registry=registry,
        options=ocp.CheckpointManagerOptions(
            # What orbax would otherwise reset, with a warning each, when read-only.
            **(dict(save_interval_steps=0, max_to_keep=None) if read_only else
               dict(max_to_keep=max_to_keep)),
            create=not read_only, cleanup_tmp_directories=not read_only,
            read_only=read_only, enable_async_checkpointing=async_save))
    self._closed = False

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    meta = dict(meta, step=int(step), fingerprint=fingerprint(state),
                fingerprint_paths=_leaf_paths(state), fingerprint_kind=FINGERPRINT_KIND)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def saved_tree(self, step: int):
    """The `state` item's tree of ArrayMetadata (shape, dtype) of `step`."""
    metadata = self._manager.metadata(step).item_metadata
    tree = None if metadata is None else metadata.get("state")
    if tree is None:
      raise CheckpointError("its state item is missing or unreadable")
    return getattr(tree, "tree", tree)

  def restore_latest(self, target, quarantine: bool = True):
    """Restores the newest good checkpoint into the structure/sharding of `target`.

    Returns (state, meta), or None when there is no checkpoint. Bad
    checkpoints are moved aside with a warning (with `quarantine=False`,
    e.g. when only reading a run, they stay and are skipped); if none is
    good, raises CheckpointError naming what was tried. A checkpoint whose
    tree, shapes or dtypes differ from `target`'s raises
    CheckpointMismatchError (naming the first differing leaf) and is left
    in place.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    tried = []
    for step in reversed(self.all_steps()):
      try:
        difference = tree_difference(self.saved_tree(step), abstract)
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e, tried, quarantine)
        continue
      if difference is not None:
        config_json = os.path.join(os.path.dirname(self.directory), "config.json")
        raise CheckpointMismatchError(
            f"checkpoint {step} in {self.directory} does not fit the model being built: "
            f"{difference}. The config's model differs from the one the run was started with: "
            f"resume with the run's own config ({config_json}), or use a new --workdir. "
            f"Nothing was moved.")
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
        bad_values = _fingerprint_difference(state, meta, step)
        if bad_values is not None:
          raise CheckpointError(
              f"its contents do not match the fingerprint saved with it ({bad_values})")
        return state, meta
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e, tried, quarantine)
    if tried and not quarantine:
      raise CheckpointError(f"no usable checkpoint in {self.directory}; tried "
                            f"{'; '.join(tried)}. Nothing was moved.")
    if tried:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory}; tried {'; '.join(tried)}. The bad ones "
          f"were moved to {self._corrupt_dir()}. Start a new --workdir, or delete "
          f"{self.directory} to start this one from scratch.")
    return None

  def _skip(self, step: int, error: Exception, tried: list, quarantine: bool) -> None:
    """Records a checkpoint that cannot be read, and moves it aside if `quarantine`."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    tried.append(f"step {step} ({reason})")
    if quarantine:
      self._quarantine(step, reason)
    else:
      logging.warning("checkpoint %d in %s cannot be used (%s); trying the previous one.",
                      step, self.directory, reason)

  def _corrupt_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")

  def _quarantine(self, step: int, reason: str) -> None:
    logging.warning("checkpoint %d in %s cannot be used (%s); moving it aside and trying the "
                    "previous one.", step, self.directory, reason)
    if parallel.is_main_process():
      os.makedirs(self._corrupt_dir(), exist_ok=True)
      dest = os.path.join(self._corrupt_dir(), str(step))
      suffix = 1
      while os.path.exists(dest):
        dest, suffix = os.path.join(self._corrupt_dir(), f"{step}.{suffix}"), suffix + 1
      shutil.move(os.path.join(self.directory, str(step)), dest)
    ocp.multihost.sync_global_processes(f"neurojax_quarantine_{step}")  # no-op in one process
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until a pending (async) save is committed; a no-op after close()."""
    if not self._closed:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a pending save, then closes the orbax manager. Idempotent."""
    if not self._closed:
      self._closed = True
      self._manager.close()
