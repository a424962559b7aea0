"""Runs an experiment: `python -m neurojax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.schedule.lr=0.1`.
Re-running the same command in the same workdir resumes from the latest
checkpoint. Bad input (an unknown field, model, dataset or method, a bad
value, a missing dataset) stops the run before anything is compiled, with a
message that names the field and the valid choices.
"""

from __future__ import annotations

import logging as pylogging
import re
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


def _unknown_field_message(argv, error) -> str:
  """Turns ml_collections' KeyError for `--config.a.typo=...` into a clear message."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  match = re.match(r"""['"]?([^'"\n]+)['"]?""", text)
  key = match.group(1) if match else text
  override = next((a for a in argv if a.startswith("--config.") and
                   re.search(rf"[.]{re.escape(key)}([.=]|$)", a.split("=")[0])), None)
  hint = next((l for l in text.splitlines() if l.startswith("Did you mean")), "")
  message = f"unknown config field {key!r}"
  if override:
    message = f"{override.split('=')[0]}: {message}"
    try:
      from neurojax.config import load_config_file  # pylint: disable=g-import-not-at-top
      config_file = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
      node = load_config_file(config_file)
      for part in override.split("=")[0].split(".")[1:]:
        if part == key:
          break
        node = node[part]
      message += f"; the fields here are: {', '.join(sorted(node.keys()))}"
    except Exception:  # pylint: disable=broad-except
      pass
  return f"neurojax: bad config: {message}. {hint}".strip()


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on "
             "flags.")
  except (KeyError, AttributeError) as e:
    sys.exit(_unknown_field_message(argv, e))


def main(argv):
  logging.get_absl_logger().addFilter(_quiet_libraries)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # pylint: disable=g-import-not-at-top
  from neurojax import config as config_lib, methods, parallel
  from neurojax.data import DataConfigError, DatasetNotFoundError
  from neurojax.methods.kakuritsu import BackboneError
  from neurojax.train import CheckpointError, NonFiniteLossError
  from neurojax.train.experiment import ConfigMismatchError
  from neurojax.train.optimizers import OptimizerConfigError
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"neurojax: bad config: {e}")
  parallel.initialize(config.distributed)
  logging.info("config:\n%s", config)
  try:
    methods.get(config.method)(config, _WORKDIR.value)
  except (DataConfigError, DatasetNotFoundError, CheckpointError, NonFiniteLossError,
          ConfigMismatchError, BackboneError, OptimizerConfigError) as e:
    sys.exit(f"neurojax: {type(e).__name__}: {e}")


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
