"""Every shipped config loads and passes validation (before any data or compile)."""

import glob
import os

import pytest

from neurojax.config import load_config_file, validate

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs", "[!_]*.py")))


def test_configs_exist():
  assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates(path):
  config = load_config_file(path)
  validate(config)
  from neurojax import methods  # pylint: disable=g-import-not-at-top
  assert config.method in methods.names()
