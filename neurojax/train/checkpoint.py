"""Orbax checkpoints of the whole train state, plus the data position.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta`
(JSON: step, data position, and a fingerprint of the state). Orbax writes
into a temporary directory and renames it when complete, so a half-written
checkpoint is never picked up. A checkpoint that is complete on disk but
fails to load, or whose contents do not match its fingerprint, is moved to
`<workdir>/corrupt_checkpoints/` (never deleted) and the one before it is
used instead.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  pass


@jax.jit
def _fingerprint(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.stack([jnp.stack([jnp.sum(x.astype(jnp.float32)),
                               jnp.sum(jnp.abs(x.astype(jnp.float32)))]) for x in leaves])


def fingerprint(tree) -> list[list[float]]:
  """Per-leaf (sum, sum |x|): detects a checkpoint whose values changed."""
  return np.asarray(jax.device_get(_fingerprint(tree)), np.float64).tolist()


def _same_fingerprint(a, b) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6)


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save))

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    meta = dict(meta, step=int(step), fingerprint=fingerprint(state))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore_latest(self, target, quarantine: bool = True):
    """Restores the newest good checkpoint into the structure/sharding of `target`.

    Returns (state, meta), or None when there is no checkpoint. Bad
    checkpoints are moved aside with a warning (with `quarantine=False`,
    e.g. when only reading a run, they stay and are skipped); if none is
    good, raises CheckpointError naming what was tried.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    tried = []
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], restored["meta"]
        if not _same_fingerprint(fingerprint(state), meta["fingerprint"]):
          raise CheckpointError("its contents do not match the fingerprint saved with it")
        return state, meta
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        tried.append(f"step {step} ({reason})")
        if quarantine:
          self._quarantine(step, reason)
        else:
          logging.warning("checkpoint %d in %s cannot be used (%s); trying the previous one.",
                          step, self.directory, reason)
    if tried and not quarantine:
      raise CheckpointError(f"no usable checkpoint in {self.directory}; tried "
                            f"{'; '.join(tried)}. Nothing was moved.")
    if tried:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory}; tried {'; '.join(tried)}. The bad ones "
          f"were moved to {self._corrupt_dir()}. Start a new --workdir, or delete "
          f"{self.directory} to start this one from scratch.")
    return None

  def _corrupt_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")

  def _quarantine(self, step: int, reason: str) -> None:
    logging.warning("checkpoint %d in %s cannot be used (%s); moving it aside and trying the "
                    "previous one.", step, self.directory, reason)
    if jax.process_index() == 0:
      os.makedirs(self._corrupt_dir(), exist_ok=True)
      dest = os.path.join(self._corrupt_dir(), str(step))
      suffix = 1
      while os.path.exists(dest):
        dest, suffix = os.path.join(self._corrupt_dir(), f"{step}.{suffix}"), suffix + 1
      shutil.move(os.path.join(self.directory, str(step)), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"neurojax_quarantine_{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
