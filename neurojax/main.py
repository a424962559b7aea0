"""Runs an experiment: `python -m neurojax.main --config=configs/X.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.schedule.lr=0.1`.
Re-running the same command in the same workdir resumes from the latest
checkpoint; `--mode=eval` evaluates it (neurojax.evaluate). Bad input (a missing config file, an unknown field, model,
dataset or method, a bad value, a batch size the devices cannot split, a
missing or corrupt dataset, a workdir that cannot be written) stops the run
before anything is compiled, with one line `neurojax: ...` that names the
field or path and the fix, and a non-zero exit code.
"""

from __future__ import annotations

import difflib
import errno
import logging as pylogging
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics, TensorBoard events and results. "
    "Re-running with the same workdir resumes.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"], "train: train (or resume) the config's method; eval: "
    "evaluate the workdir's newest checkpoint (or config.init_from's weights) on "
    "config.data.eval_split without training or touching the checkpoints.")
_EVAL_OUT = flags.DEFINE_string(
    "eval_out", None, "--mode=eval: the metrics' JSON file (default "
    "<workdir>/eval/<split>-step<N>.json).")
flags.mark_flags_as_required(["config", "workdir"])


# How a full disk shows in an exception: an OSError's errno, or the text of
# one re-raised by a library (orbax/tensorstore: "RESOURCE_EXHAUSTED: ...
# No space left on device [os_error_code='28']").
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='?(28|122)\b")


def _quiet_libraries(record) -> bool:
  """Keeps orbax's per-save INFO chatter out of the console."""
  return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def _not_disk_full(record) -> bool:
  """Keeps out of the console the errors that orbax's writer threads and
  asyncio log when the disk fills up (main says that in one line); they are
  logged again at DEBUG."""
  if record.levelno < pylogging.ERROR or not (
      "orbax" in record.pathname or record.name == "asyncio"):
    return True
  if not (_DISK_FULL.search(record.getMessage()) or
          (record.exc_info and _disk_full(record.exc_info[1]))):
    return True
  logging.debug("(console error hidden: the disk is full) %s", record.getMessage())
  return False


def _quiet_event_loop_closed(default_hook):
  """A sys.unraisablehook: tensorstore's write callbacks, fired after orbax
  closed the event loop of a failed save, raise 'Event loop is closed'; they
  go to the DEBUG log, anything else to `default_hook`."""
  def hook(unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"):
      logging.debug("ignored after a failed checkpoint write: %s", unraisable.exc_value)
    else:
      default_hook(unraisable)
  return hook


def _config_flag_value(argv):
  """The value of --config in argv (`--config=X` or `--config X`), or None."""
  for i, arg in enumerate(argv):
    for name in ("--config", "-config"):
      if arg.startswith(name + "="):
        return arg[len(name) + 1:]
      if arg == name and i + 1 < len(argv):
        return argv[i + 1]
  return None




def _shipped_config(argv):
  """argv with a --config that names a shipped config (`dnr_flowers`,
  `dnr_flowers.py`, `configs/dnr_flowers.py` or `neurojax/configs/...`, from
  any directory, also when neurojax is installed) replaced by its path in
  the package; other values are left as they are."""
  value = _config_flag_value(argv)
  if value is None:
    return argv
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    return argv
  from neurojax.config import CONFIGS_DIR  # pylint: disable=g-import-not-at-top
  name = os.path.basename(path)
  shipped = os.path.join(CONFIGS_DIR, name if name.endswith(".py") else name + ".py")
  if os.path.dirname(path) not in ("", "configs", os.path.join("neurojax", "configs")) or (
      not os.path.isfile(shipped)):
    return argv
  new = shipped + sep + arg
  return [a.replace(value, new, 1) if a in (f"--config={value}", f"-config={value}", value)
          else a for a in argv]


def _check_config_file(argv) -> None:
  """Exits with one line if --config does not name a config file."""
  value = _config_flag_value(argv)
  if value is None:
    return                # absl says that --config is required
  path = value.split(":", 1)[0]
  if os.path.isfile(path):
    return
  folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
  names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and n[0] != "_") if os.path.isdir(
      folder) else []
  close = [] if folder == path else difflib.get_close_matches(os.path.basename(path), names, n=1)
  from neurojax.config import shipped_configs  # pylint: disable=g-import-not-at-top
  near = difflib.get_close_matches(os.path.basename(path).removesuffix(".py"), shipped_configs(),
                                   n=1)
  if close:
    hint = f"did you mean --config={os.path.join(os.path.dirname(path), close[0])}?"
  elif near and os.path.dirname(path) in ("", "configs", os.path.join("neurojax", "configs")):
    hint = f"did you mean --config={near[0]} (a shipped config)?"
  elif names:
    hint = f"the configs in {folder} are: {', '.join(names)}"
  else:
    hint = "pass a config file, or the name of a shipped one, such as dnr_flowers"
  what = "is a directory" if os.path.isdir(path) else "does not exist"
  sys.exit(f"neurojax: --config={path} {what}; {hint}")


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
      # pylint: disable-next=g-import-not-at-top
      from neurojax.config import RENAMED_FIELDS, load_config_file
      renamed = RENAMED_FIELDS.get(override.split("=")[0][len("--config."):])
      if renamed:
        message += f"; it was renamed: use {renamed}"
      config_file = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
      path, _, arg = config_file.partition(":")     # file.py:arg gives get_config(arg)
      node = load_config_file(path, *([arg] if arg else []))
      for part in override.split("=")[0].split(".")[1:]:
        if part == key:
          break
        node = node[part]
      message += f"; the fields here are: {', '.join(sorted(node.keys()))}"
    except Exception:  # pylint: disable=broad-except
      pass
  return f"neurojax: bad config: {message}. {hint}".strip()


def _no_get_config_message(argv) -> str:
  path = _config_flag_value(argv).split(":", 1)[0]
  return (f"neurojax: --config={path} has no get_config(); a config file defines "
          f"get_config() returning an ml_collections.ConfigDict (start from "
          f"neurojax.config.base_config(), as configs/default.py does)")


def _parse_flags(argv):
  argv = _shipped_config(argv)
  _check_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if "--config must have a value other than None" in str(e) and _config_flag_value(argv):
      sys.exit(f"neurojax: get_config() of --config={_config_flag_value(argv)} returned None; "
               f"it must return the ml_collections.ConfigDict (a missing `return`?)")
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on "
             "flags.")
  except (KeyError, AttributeError) as e:
    if "has no attribute 'get_config'" in str(e):
      sys.exit(_no_get_config_message(argv))
    sys.exit(_unknown_field_message(argv, e))


def _disk_full(error: BaseException) -> OSError | None:
  """An OSError(ENOSPC or EDQUOT) for `error` if it, or an exception it was
  raised from, says the disk is full; else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return error
    match = _DISK_FULL.search(str(error))
    if match:
      quota = "quota" in match.group(0) or match.group(1) == "122"
      code = errno.EDQUOT if quota else errno.ENOSPC
      return OSError(code, os.strerror(code))
    error = error.__cause__ or error.__context__
  return None


def _exit_disk_full(error: OSError, workdir: str) -> None:
  """Exits with one line. What background threads and the interpreter's
  shutdown would still print about the failed writes goes to the DEBUG log."""
  from neurojax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  def quiet(what):
    def hook(args):
      try:
        logging.debug("ignored after the disk filled up (%s): %s", what, args.exc_value)
      except Exception:  # pylint: disable=broad-except
        pass           # late in shutdown even logging may fail
    return hook
  sys.unraisablehook = quiet("unraisable")
  threading.excepthook = quiet("thread")
  sys.exit(f"neurojax: {workdir_lib.os_error_message(error, workdir)}; then re-run the same "
           f"command to resume from the last checkpoint")


def main(argv):
  logging.get_absl_logger().addFilter(_quiet_libraries)
  logging.get_absl_handler().addFilter(_not_disk_full)
  sys.unraisablehook = _quiet_event_loop_closed(sys.unraisablehook)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # pylint: disable=g-import-not-at-top
  import jax
  import ml_collections
  from neurojax import config as config_lib, methods, parallel
  from neurojax.data import DataConfigError, DatasetNotFoundError, IdxFormatError, ImageFileError
  from neurojax.methods.kakuritsu import BackboneError
  from neurojax.train import CheckpointError, NonFiniteLossError
  from neurojax.train.experiment import ConfigMismatchError
  from neurojax.train import workdir as workdir_lib
  from neurojax.train.optimizers import OptimizerConfigError
  from neurojax.train.workdir import WorkdirStateError
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    sys.exit(f"neurojax: get_config() of --config={_config_flag_value(sys.argv)} returned "
             f"{type(config).__name__}, not an ml_collections.ConfigDict; start from "
             f"neurojax.config.base_config() and return it")
  workdir = _WORKDIR.value
  try:
    config_lib.validate(config)          # before jax starts: a bad config fails fast
    parallel.initialize(config.distributed)
    config_lib.check_device_count(config, jax.device_count())
  except config_lib.ConfigError as e:
    sys.exit(f"neurojax: bad config: {e}")
  try:
    created = workdir_lib.check_writable_dir(workdir)
  except workdir_lib.WorkdirError as e:
    sys.exit(f"neurojax: {e}")
  logging.info("config:\n%s", config)
  from neurojax.train import preempt
  preempt.install()       # SIGTERM / SIGINT: checkpoint the current step, then stop
  try:
    try:
      if _MODE.value == "eval":
        from neurojax import evaluate
        evaluate.run(config, workdir, _EVAL_OUT.value)
      else:
        methods.get(config.method)(config, workdir)
    finally:
      workdir_lib.remove_empty_dirs(created)  # a run that wrote nothing leaves nothing
  except preempt.Preempted as stop:
    print(f"neurojax: {stop}; a checkpoint of step {stop.step} is in {workdir}. Re-run the "
          f"same command to resume from it.", file=sys.stderr)
    sys.exit(stop.exit_code)
  except config_lib.ConfigError as e:     # found by a method at run time (e.g. on the model)
    sys.exit(f"neurojax: bad config: {e}")
  except (DataConfigError, DatasetNotFoundError, IdxFormatError, ImageFileError, CheckpointError,
          NonFiniteLossError, ConfigMismatchError, BackboneError, OptimizerConfigError,
          WorkdirStateError) as e:
    sys.exit(f"neurojax: {type(e).__name__}: {e}")
  except Exception as e:  # pylint: disable=broad-except
    full = _disk_full(e)
    if full is None:
      raise
    logging.debug("the disk under %s is full:", workdir, exc_info=e)
    _exit_disk_full(full, workdir)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
