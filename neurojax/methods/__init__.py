"""Method drivers by name: `config.method` selects one; each is `run(config, workdir)`."""

from __future__ import annotations

import importlib

_METHODS = {
    "supervised": "neurojax.methods.supervised",
}


def names() -> list[str]:
  return sorted(_METHODS)


def get(name: str):
  if name not in _METHODS:
    raise ValueError(f"config.method={name!r} is not valid; choose one of: {', '.join(names())}")
  return importlib.import_module(_METHODS[name]).run
