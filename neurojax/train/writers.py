"""What the user sees: JSON-lines metrics, TensorBoard events, a progress bar.

Only process 0 writes. On resume, `MetricWriter(..., resume_step=s)` drops
lines after step s from `metrics.jsonl` and tells TensorBoard to purge
events after s, so both show exactly one history.

The run's PNG plots go to TensorBoard too, as images tagged by the file's
stem at the run's last step (`write_plots`, called by `report.write`).

Each record is appended as one whole line in a single write, so a killed
process or a full disk can only tear the last line; readers drop a torn last
line with a warning. An unreadable line before the last is an error
(`MetricsFileError`, naming the file and the line).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import logging

from neurojax import parallel
from neurojax.train.workdir import WorkdirStateError


class MetricsFileError(WorkdirStateError):
  """metrics.jsonl has an unreadable line before its last."""


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tb/`."""

  def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
    self.active = parallel.is_main_process()
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_jsonl(self.path, resume_step or 0)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      tb = os.path.join(workdir, "tb")
      _truncate_plot_index(tb, resume_step or 0)
      self._tb = SummaryWriter(tb, purge_step=None if resume_step is None else resume_step + 1,
                               filename_suffix=_event_file_suffix())

  def write(self, step: int, scalars: dict, prefix: str = "") -> None:
    if not self.active:
      return
    scalars = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    _append_line(self.path, json.dumps({"step": int(step), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk (metrics.jsonl is never
    buffered). A no-op after close()."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer. Idempotent."""
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close()


def _event_file_suffix() -> str:
  """tensorboardX names an event file by the second and the host only, and
  opens it with "wb": a second writer in the same second (a resume right
  after a run, the plots' writer after a short run) would wipe the first's
  file. A nanosecond suffix keeps the names apart and in the order written
  (TensorBoard reads a directory's event files in name order)."""
  return f".{time.time_ns()}"


_PLOT_INDEX = "plots.json"    # in tb/: {tag: step} of the plot images in its event files


def write_plots(workdir: str, paths, step: int) -> list[str]:
  """Adds each PNG of `paths` to `<workdir>/tb` as an image (tag: the file's
  stem, HWC uint8 RGB) at `step`; process 0 only. Returns the tags written.

  Skipped where the run writes no TensorBoard events (no `tb/`). An image
  already there at `step` (a finished run run again) is not added twice:
  `tb/plots.json` lists the tags and steps written, and a resume drops the
  entries after its step along with the events TensorBoard purges.
  """
  tb = os.path.join(workdir, "tb")
  if not parallel.is_main_process() or not os.path.isdir(tb):
    return []
  written = _read_plot_index(tb)
  todo = [(os.path.splitext(os.path.basename(p))[0], p) for p in paths]
  todo = [(tag, p) for tag, p in todo if written.get(tag) != int(step)]
  if not todo:
    return []
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  tbw = SummaryWriter(tb, filename_suffix=_event_file_suffix())
  try:
    for tag, path in todo:
      with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
      tbw.add_image(tag, pixels, int(step), dataformats="HWC")
      written[tag] = int(step)
  finally:
    tbw.close()
  _write_plot_index(tb, written)
  return [tag for tag, _ in todo]


def _read_plot_index(tb: str) -> dict[str, int]:
  try:
    with open(os.path.join(tb, _PLOT_INDEX)) as f:
      index = json.load(f)
  except (OSError, ValueError):    # none yet, or torn: at worst an image is written again
    return {}
  return {k: v for k, v in index.items() if isinstance(v, int)} if isinstance(index, dict) else {}


def _write_plot_index(tb: str, index: dict[str, int]) -> None:
  path = os.path.join(tb, _PLOT_INDEX)
  with open(path + ".tmp", "w") as f:
    json.dump(index, f)
  os.replace(path + ".tmp", path)


def _truncate_plot_index(tb: str, keep_through_step: int) -> None:
  """Forgets the plot images after `keep_through_step` (TensorBoard purges them)."""
  index = _read_plot_index(tb)
  kept = {k: v for k, v in index.items() if v <= keep_through_step}
  if kept != index:
    _write_plot_index(tb, kept)


def _append_line(path: str, line: str) -> None:
  """Appends `line` with one write(2) on an O_APPEND descriptor (no user-space
  buffer, so nothing is left to flush): an interrupted append leaves at most
  a torn last line, never a torn line in the middle."""
  data = line.encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    written = os.write(fd, data)
    while written < len(data):    # a short write (e.g. a signal): finish the same line
      written += os.write(fd, data[written:])
  finally:
    os.close(fd)


def _read_jsonl(path: str) -> list[tuple[str, dict]]:
  """(line, record) for each record of a JSON-lines metrics file.

  A torn or undecodable last line (a killed writer, a full disk) is dropped
  with a warning; an undecodable line before it raises MetricsFileError.
  """
  with open(path, "rb") as f:
    raw = f.read().decode("utf-8", errors="replace").split("\n")
  numbered = [(i + 1, l) for i, l in enumerate(raw) if l.strip()]
  out = []
  for k, (number, line) in enumerate(numbered):
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a record with an integer 'step'")
    except ValueError as e:
      if k == len(numbered) - 1:
        logging.warning("%s: line %d is incomplete or unreadable (a run killed while writing "
                        "it?); dropping it (%s)", path, number, e)
        break
      raise MetricsFileError(
          f"{path}: line {number} is not a metrics record ({e}); it is not the last line, so "
          f"this is not a torn write: fix or remove that line.") from None
    out.append((line.rstrip("\r") + "\n", record))
  return out


def _truncate_jsonl(path: str, keep_through_step: int) -> None:
  """Keeps the records up to `keep_through_step` (and drops a torn last line)."""
  if not os.path.exists(path):
    return
  lines = [line for line, record in _read_jsonl(path) if record["step"] <= keep_through_step]
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl` (a torn last line is dropped with a warning)."""
  return [record for _, record in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


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
    if enabled and parallel.is_main_process():
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

  def set_total(self, total: int) -> None:
    if self._bar is not None:
      self._bar.total = total
      self._bar.refresh()

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
