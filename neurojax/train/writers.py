"""What the user sees: JSON-lines metrics, TensorBoard events, a progress bar.

Only process 0 writes. On resume, `MetricWriter(..., resume_step=s)` drops
lines after step s from `metrics.jsonl` and tells TensorBoard to purge
events after s, so both show exactly one history.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tb/`."""

  def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_jsonl(self.path, resume_step or 0)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"),
                               purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    if not self.active:
      return
    scalars = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _truncate_jsonl(path: str, keep_through_step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= keep_through_step]
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def metrics_by_step(workdir: str) -> dict[int, dict]:
  """The records of `<workdir>/metrics.jsonl` merged per step."""
  by_step: dict[int, dict] = {}
  for r in read_metrics(workdir):
    by_step.setdefault(r["step"], {}).update(r)
  return by_step


class Progress:
  """A tqdm bar over steps with images/s, on process 0 only (no host syncs)."""

  def __init__(self, total: int, initial: int, images_per_step: int, desc: str = "train",
               enabled: bool = True):
    self.images_per_step = images_per_step
    self._bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.5)
    self._mark = (time.perf_counter(), initial)

  @property
  def enabled(self) -> bool:
    return self._bar is not None

  def update(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def throughput(self, step: int) -> float:
    """Images/s since the last call (call it right after a host sync)."""
    now = time.perf_counter()
    t0, s0 = self._mark
    self._mark = (now, step)
    return (step - s0) * self.images_per_step / max(now - t0, 1e-9)

  def show(self, **values) -> None:
    if self._bar is not None:
      self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in values.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
  """A plain-text table of dicts (floats to 4 significant digits)."""
  columns = columns or list(rows[0])
  cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _fmt(v) -> str:
  if isinstance(v, (float, np.floating)):
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
  return str(v)
