"""The one report writer: results.json, a summary table and a plot.

Every method ends with `write(workdir, method, results, ...)`: results.json
records `method` (what `python -m neurojax.plots` dispatches on) beside the
method's own fields, written atomically, and the table and plot are printed
on process 0. The plot's PNGs go to TensorBoard as images too, at the last
step of metrics.jsonl (`writers.write_plots`).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

from neurojax import parallel
from neurojax.tables import format_table
from neurojax.train import writers


def write(workdir: str, method: str, results: dict, *, title: str, rows: Sequence[dict] = (),
          columns: Sequence[str] | None = None, lines: Sequence[str] = (),
          plot: Callable[[], str] | None = None) -> dict:
  """Writes `<workdir>/results.json` ({"method": method, **results}) and prints
  `title`, the table of `rows`, `lines` and the plot's path; process 0 only
  (the others get {}). `plot()` draws the PNG(s) and returns the path, or
  paths joined by ", "; each goes to TensorBoard as an image where the run
  wrote TensorBoard events (`<workdir>/tb`)."""
  if not parallel.is_main_process():
    return {}
  results = {"method": method, **results}
  path = os.path.join(workdir, "results.json")
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(path + ".tmp", path)
  print(f"\n{title}")
  if rows:
    print(format_table(list(rows), list(columns) if columns else None))
  for line in lines:
    print(line)
  if plot is not None:
    drawn = plot()
    print("plot:", drawn)
    _plots_to_tensorboard(workdir, drawn)
  return results


def _plots_to_tensorboard(workdir: str, drawn: str) -> None:
  """The PNGs named by `drawn` as TensorBoard images at the run's last step."""
  paths = [drawn] if os.path.isfile(drawn) else [
      p for p in drawn.split(", ") if p.endswith(".png") and os.path.isfile(p)]
  metrics = os.path.join(workdir, "metrics.jsonl")
  if not paths or not os.path.exists(metrics):
    return
  steps = [r["step"] for r in writers.read_metrics(workdir)]
  if steps:
    writers.write_plots(workdir, paths, max(steps))


def read(workdir: str) -> dict:
  """`<workdir>/results.json`."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished run?")
  with open(path) as f:
    return json.load(f)
