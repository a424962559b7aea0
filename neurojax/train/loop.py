"""The one training loop every method drives.

`fit` runs train steps from `state.step` to `num_steps`. It never syncs
with the host inside a step; it syncs only at *flush points*: every
`log_every` steps, at each step where a hook is due, and at the end. At a
flush it fetches the pending per-step metrics, stops with
`NonFiniteLossError` (naming the step) if a loss is NaN/inf, writes the
window's mean to the metric writer, and only then runs the due hooks, so a
checkpoint hook never saves a state that produced a bad loss. When a stop
was requested (SIGTERM/SIGINT, `train.preempt`) it flushes and raises
`Preempted` with the state after the last step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import jax
import numpy as np
from absl import logging

from neurojax import parallel
from neurojax.train import preempt
from neurojax.train.state import TrainState
from neurojax.train.writers import MetricWriter, Progress


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Hook:
  """Calls `fn(step, state)` after every `every` steps, and after the last
  step when `at_end`. `every <= 0` means only at the end. A hook that
  returns a `TrainState` replaces the state (e.g. a method changing a value
  it keeps in the optimizer state); its arrays must keep their shapes,
  dtypes and shardings, so the step does not re-jit."""
  every: int
  fn: Callable[[int, TrainState], None]
  at_end: bool = True

  def due(self, step: int, last: int) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last)


def _stop_requested(step: int, flushing: bool) -> int | None:
  """The signal to stop on at this step: every step in one process; in
  several, at flush points only, once all processes agree."""
  if jax.process_count() == 1:
    return preempt.requested()
  if not flushing:
    return None
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  signals = multihost_utils.process_allgather(np.int32(preempt.requested() or 0))
  return int(np.max(signals)) or None


def fit(state: TrainState, *, train_step, batches: Iterable, mesh, num_steps: int,
        writer: MetricWriter, hooks: Sequence[Hook] = (), log_every: int = 50,
        progress: Progress | None = None, lr: Callable[[np.ndarray], np.ndarray] | None = None,
        stop: Callable[[int], bool] | None = None) -> TrainState:
  """Trains until `state.step == num_steps`; `batches` yields the host
  batches of steps `state.step`, `state.step + 1`, ... (e.g.
  `data.train.batches(int(state.step))`). `lr(steps)`, if given, is the
  learning rate at those (0-based) steps, logged as train/lr. `stop(step)`,
  asked after the hooks of a step where some were due, ends training there
  when it returns True."""
  step = int(state.step)
  batches = iter(batches)
  pending = []
  while step < num_steps:
    state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh))
    step += 1
    pending.append(metrics)
    if progress is not None:
      progress.update()
    due = [h for h in hooks if h.due(step, num_steps)]
    flushing = bool(due) or step % log_every == 0 or step == num_steps
    signal = _stop_requested(step, flushing)
    if flushing or signal:
      _flush(step, pending, writer, progress, lr)
      pending = []
      for hook in due:
        out = hook.fn(step, state)
        if isinstance(out, TrainState):
          state = out
      if due and progress is not None:
        progress.throughput(step)   # don't count eval/checkpoint time as training
    if signal:
      raise preempt.Preempted(signal, step, state)
    if due and stop is not None and stop(step):
      break
  return state


def _flush(step: int, pending: list, writer: MetricWriter, progress: Progress | None,
           lr=None) -> None:
  values = jax.device_get(pending)
  for i, m in enumerate(values):
    if not math.isfinite(float(m["loss"])):
      bad = step - len(values) + i + 1
      raise NonFiniteLossError(
          f"the training loss is {float(m['loss'])} at step {bad}. The run stopped; checkpoints "
          f"saved before step {bad} are kept. Lower config.schedule.lr, add warm-up "
          f"(config.schedule.warmup_epochs) or use float32 (config.compute_dtype).")
  mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  if lr is not None:     # the steps that produced `values` are step - len(values) .. step - 1
    mean["lr"] = float(np.mean(np.asarray(lr(np.arange(step - len(values), step)))))
  if progress is not None:
    mean["images_per_sec"] = progress.throughput(step)
    progress.show(loss=mean["loss"], top1=mean["top1"], img_s=int(mean["images_per_sec"]))
  writer.write(step, mean, prefix="train/")
  if progress is None or not progress.enabled:   # the bar shows them otherwise
    logging.log_every_n_seconds(logging.INFO, "step %d: %s", 30, step, mean)
