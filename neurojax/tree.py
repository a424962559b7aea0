"""Pytree helpers shared across the library."""

from __future__ import annotations


def path_str(path) -> str:
  """'/'-joined keys of a `jax.tree_util` key path, e.g. 'conv1/kernel'."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
