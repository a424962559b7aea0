"""The one training loop every method drives.

`fit` runs train steps from `state.step` to `num_steps`. It never syncs
with the host inside a step; it syncs only at *flush points*: every
`log_every` steps, at each step where a hook is due, and at the end. At a
flush it fetches the pending per-step metrics, stops with
`NonFiniteLossError` (naming the step) if a loss is NaN/inf, writes the
window's mean to the metric writer, and only then runs the due hooks, so a
checkpoint hook never saves a state that produced a bad loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import jax
import numpy as np
from absl import logging

from neurojax import parallel
from neurojax.train.state import TrainState
from neurojax.train.writers import MetricWriter, Progress


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Hook:
  """Calls `fn(step, state)` after every `every` steps, and after the last
  step when `at_end`. `every <= 0` means only at the end."""
  every: int
  fn: Callable[[int, TrainState], None]
  at_end: bool = True

  def due(self, step: int, last: int) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last)


def fit(state: TrainState, *, train_step, batches: Iterable, mesh, num_steps: int,
        writer: MetricWriter, hooks: Sequence[Hook] = (), log_every: int = 50,
        progress: Progress | None = None) -> TrainState:
  """Trains until `state.step == num_steps`; `batches` yields the host
  batches of steps `state.step`, `state.step + 1`, ... (e.g.
  `data.train.batches(int(state.step))`)."""
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
    if due or step % log_every == 0 or step == num_steps:
      _flush(step, pending, writer, progress)
      pending = []
      for hook in due:
        hook.fn(step, state)
      if due and progress is not None:
        progress.throughput(step)   # don't count eval/checkpoint time as training
  return state


def _flush(step: int, pending: list, writer: MetricWriter, progress: Progress | None) -> None:
  values = jax.device_get(pending)
  for i, m in enumerate(values):
    if not math.isfinite(float(m["loss"])):
      bad = step - len(values) + i + 1
      raise NonFiniteLossError(
          f"the training loss is {float(m['loss'])} at step {bad}. The run stopped; checkpoints "
          f"saved before step {bad} are kept. Lower config.schedule.lr, add warm-up "
          f"(config.schedule.warmup_epochs) or use float32 (config.compute_dtype).")
  mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  if progress is not None:
    mean["images_per_sec"] = progress.throughput(step)
    progress.show(loss=mean["loss"], top1=mean["top1"], img_s=int(mean["images_per_sec"]))
  writer.write(step, mean, prefix="train/")
  if progress is None or not progress.enabled:   # the bar shows them otherwise
    logging.log_every_n_seconds(logging.INFO, "step %d: %s", 30, step, mean)
