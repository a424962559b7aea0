"""Method drivers by name: `config.method` selects one; each is `run(config, workdir)`.

A method module has `run(config, workdir)`, and optionally `config()` (its
section, `config.<method>`), `validate(config)` and `RESUME_SAFE` (its fields
that may change between the runs of one workdir). README.md, "Adding a
method", walks through one."""

from __future__ import annotations

import importlib

_METHODS = {
    "supervised": "neurojax.methods.supervised",
    "prune": "neurojax.methods.prune",
    "generations": "neurojax.methods.generations",
    "kakuritsu": "neurojax.methods.kakuritsu",
    "rejuvenation": "neurojax.methods.rejuvenation",
    "bayes": "neurojax.methods.bayes",
}


def names() -> list[str]:
  return sorted(_METHODS)


def sections() -> dict:
  """{method: its default ConfigDict}: a method that has a `config()` owns the
  section `config.<method>` (base_config() adds it; the method's validate()
  checks it). config.sparsity, the sparsity library's knobs, is shared
  (neurojax.config.sparsity_config)."""
  return {name: module(name).config() for name in _METHODS
          if hasattr(module(name), "config")}


def module(name: str):
  if name not in _METHODS:
    raise ValueError(f"config.method={name!r} is not valid; choose one of: {', '.join(names())}")
  return importlib.import_module(_METHODS[name])


def get(name: str):
  """The driver `run(config, workdir)` of method `name`."""
  return module(name).run


def validate(config) -> None:
  """The method's own config checks, if it has any (raises ValueError)."""
  check = getattr(module(config.method), "validate", None)
  if check is not None:
    check(config)
