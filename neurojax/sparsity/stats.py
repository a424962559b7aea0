"""Sparsity statistics: per-layer and total nonzeros, density, compression
and multiply-accumulates (MACs), as rows and as a printable table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from neurojax.sparsity.masks import is_none
from neurojax.tree import path_str
from neurojax.tables import format_table


def output_shapes(model, variables, input_shape):
  """Output shape (without batch) of every module, by module path."""
  _, state = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, *input_shape)), train=False, capture_intermediates=True,
      mutable=["intermediates"]), variables)
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    if keys[-2:-1] == ["__call__"] or keys[-1] == "__call__":
      shapes["/".join(k for k in keys if k != "__call__" and not k.isdigit())] = leaf.shape[1:]
  return shapes


def layer_stats(params, masks, model=None, variables=None, input_shape=None) -> list[dict]:
  """One row per masked leaf: layer, shape, nonzero, total, density, and with
  a model, dense and sparse MACs per example (conv/dense kernels)."""
  shapes = output_shapes(model, variables, input_shape) if model is not None else {}
  rows = []
  flat_masks = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)[0]
  flat_params = jax.tree.leaves(params)
  for (path, m), w in zip(flat_masks, flat_params):
    if m is None:
      continue
    w = np.asarray(w)
    name = path_str(path)
    nonzero = int(np.count_nonzero(w))
    row = {"layer": name, "shape": "x".join(map(str, w.shape)), "nonzero": nonzero,
           "total": w.size, "density": nonzero / w.size}
    out = shapes.get(name.rsplit("/", 1)[0])
    if out is not None:
      spatial = int(np.prod(out[:-1])) if len(out) > 1 else 1
      row["macs"] = spatial * w.size
      row["sparse_macs"] = spatial * nonzero
    rows.append(row)
  return rows


def summary(rows: list[dict]) -> dict:
  nonzero, total = sum(r["nonzero"] for r in rows), sum(r["total"] for r in rows)
  out = {"nonzero": nonzero, "total": total, "density": nonzero / max(total, 1),
         "compression": total / max(nonzero, 1)}
  if rows and "macs" in rows[0]:
    out["macs"] = sum(r["macs"] for r in rows)
    out["sparse_macs"] = sum(r["sparse_macs"] for r in rows)
  return out


def table(rows: list[dict]) -> str:
  """Per-layer rows plus a total line, as text."""
  total = summary(rows)
  last = {"layer": "total", "shape": f"{total['compression']:.1f}x", **total}
  return format_table(rows + [last], [c for c in ("layer", "shape", "nonzero", "total",
                                                  "density", "macs", "sparse_macs")
                                      if c in rows[0]])
