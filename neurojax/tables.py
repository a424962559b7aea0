"""Plain-text tables for summaries (no jax)."""

from __future__ import annotations

import numpy as np


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
