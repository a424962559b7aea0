"""Runs an experiment: `python -m neurojax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.schedule.lr=0.1`.
Re-running the same command in the same workdir resumes from the latest
checkpoint.
"""

from __future__ import annotations

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard events and results. "
    "Re-running with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_libraries(record) -> bool:
  """Keeps orbax's per-save INFO chatter out of the console."""
  return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_logger().addFilter(_quiet_libraries)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from neurojax import config as config_lib, methods, parallel  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"neurojax: bad config: {e}")
  parallel.initialize(config.distributed)
  logging.info("config:\n%s", config)
  methods.get(config.method)(config, _WORKDIR.value)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
