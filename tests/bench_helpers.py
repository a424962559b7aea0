"""Helpers for the tests that run a benchmarks/ script's `main` in-process."""

import importlib.util
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
  """benchmarks/<name>.py as a module (registered in sys.modules, where its
  dataclasses and cloudpickle look it up)."""
  spec = importlib.util.spec_from_file_location(
      f"benchmarks_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def assert_positive(value, what):
  assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (what, value)
