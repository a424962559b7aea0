"""The one report writer: results.json, a summary table and a plot.

Every method ends with `write(workdir, method, results, ...)`: results.json
records `method` (what `python -m neurojax.plots` dispatches on) beside the
method's own fields, written atomically, and the table and plot are printed
on process 0.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

from neurojax import parallel
from neurojax.tables import format_table


def write(workdir: str, method: str, results: dict, *, title: str, rows: Sequence[dict] = (),
          columns: Sequence[str] | None = None, lines: Sequence[str] = (),
          plot: Callable[[], str] | None = None) -> dict:
  """Writes `<workdir>/results.json` ({"method": method, **results}) and prints
  `title`, the table of `rows`, `lines` and the plot's path; process 0 only
  (the others get {})."""
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
    print("plot:", plot())
  return results


def read(workdir: str) -> dict:
  """`<workdir>/results.json`."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished run?")
  with open(path) as f:
    return json.load(f)
