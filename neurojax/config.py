"""The base experiment config and its validation.

Every config file in `configs/` starts from `base_config()`, so every knob
exists in every experiment and can be overridden on the command line as
`--config.a.b=value`. `validate(config)` runs before anything is built or
compiled; each error names the field, the bad value and the valid choices.

The trainer's sections are built here, with the shared ones: `config.schedule`
(`schedule_config()`, also the shape of a method's phase schedules, e.g.
`config.prune.retrain.schedule`) and `config.sparsity` (`sparsity_config()`).
Each method's own section (`config.prune`, `config.generations`,
`config.kakuritsu`) comes from its module's `config()` and is checked by its
`validate()` (`neurojax.methods`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import numbers
import os
import re

import ml_collections

from neurojax import models, parallel
from neurojax.train.optimizers import OPTIMIZERS
from neurojax.train.schedules import SCHEDULES


class ConfigError(ValueError):
  pass


def model_config(name: str) -> ml_collections.ConfigDict:
  """`config.model` for model `name`: its name and all its options at their defaults."""
  return ml_collections.ConfigDict({"name": name, **models.default_options(name)})


def schedule_config(**overrides) -> ml_collections.ConfigDict:
  """A learning-rate schedule section (`train.schedules.make_schedule`): `config.schedule`,
  and the schedules of a method's own phases (`config.prune.retrain.schedule`,
  `config.kakuritsu.pretrain.schedule`). `overrides` set some fields, e.g.
  `schedule_config(name="constant", lr=0.01)`; `validate_schedule` checks one."""
  c = ml_collections.ConfigDict(dict(
      name="cosine",                # constant | cosine | multistep | step
      lr=0.05,                      # the peak lr (after warm-up)
      warmup_epochs=0.0,            # linear from 0 (cosine, multistep)
      final_lr_fraction=0.0,        # cosine: ends at lr * final_lr_fraction
      milestones=(0,),              # multistep: lr *= gamma at each of these epochs
      gamma=0.1,                    # multistep, step: the lr factor
      step_epochs=30.0))            # step: lr * gamma ** (epoch // step_epochs)
  unknown = sorted(set(overrides) - set(c.keys()))
  if unknown:
    raise TypeError(f"schedule_config() has no field {', '.join(unknown)}; its fields are: "
                    f"{', '.join(c.keys())}")
  c.update(overrides)
  return c


def sparsity_config() -> ml_collections.ConfigDict:
  """`config.sparsity`: the sparsity library's knobs, shared by every method
  that scores or masks weights (method="prune"; generations' DNR mask uses
  snip_batches). `validate_sparsity` checks it."""
  return ml_collections.ConfigDict(dict(
      # Which weights masks cover: regexes on '/'-joined param paths.
      include=r"(^|/)kernel$", exclude="",
      score="magnitude",            # magnitude | snip | random | fpgm
      selection="global",           # global | per_layer | std | channels
      quality=1.0,                  # selection="std": keep |w| > quality * std(w)
      snip_batches=0))              # SNIP's batches (prune's snip score, DNR's mask);
                                    # 0: ceil(steps per epoch / 32)


# Fields that were renamed or moved: {old name: what replaced it}. main names
# the new field when an override uses an old one.
RENAMED_FIELDS = {
    "sparsity.targets": "prune.targets",
    "sparsity.retrain_epochs": "prune.retrain.epochs",
    "sparsity.retrain_lr": "prune.retrain.schedule.lr (the retrain schedule is "
                           "prune.retrain.schedule)",
    "generations.keep": "generations.reset, the fraction re-drawn (keep=0.8 is reset=0.2)",
    "generations.snip_batches": "sparsity.snip_batches (0: ceil(steps per epoch / 32))",
    "kakuritsu.pretrain_epochs": "kakuritsu.pretrain.epochs",
    "kakuritsu.pretrain_lr": "kakuritsu.pretrain.schedule.lr",
    "kakuritsu.pretrain_schedule": "kakuritsu.pretrain.schedule.name",
}


def base_config(model: str = "lenet5") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "supervised"
  c.seed = 0

  c.model = model_config(model)

  c.data = ml_collections.ConfigDict(dict(
      source="idx", name="fashion_mnist", data_dir="", train_split="train", eval_split="test",
      per_class=0, subset_seed=0, num_classes=0, image_size=0, crop_padding=0, flip=False,
      random_resized_crop=False, eval_resize=0, resize_square=False, mean=(0.0,), std=(1.0,),
      synthetic_train_size=512, synthetic_eval_size=128, synthetic_shape=(8, 8, 1),
      num_threads=4, prefetch=2,
      # timm's `rand-m9-mstd0.5-inc1` is ops=2, magnitude=9.0, std=0.5 (ops=0: off);
      # random_erasing=0.25 is timm's RandomErasing(0.25, mode="pixel") (0: off).
      randaugment_ops=0, randaugment_magnitude=9.0, randaugment_magnitude_std=0.5,
      random_erasing=0.0))

  c.batch_size = 128         # global, over all devices and processes
  c.eval_batch_size = 1000   # global; the last batch is padded, not dropped
  c.num_epochs = 10.0
  c.num_steps = 0            # > 0 overrides num_epochs

  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4, weight_decay_exclude="",
      freeze="",                    # regex on param paths never updated, e.g. "^backbone/"
      lr_groups=(),                 # (regex, lr multiplier) pairs, e.g. (("quadratic", 10.0),)
      grad_accum_steps=1,           # k > 1: one update per k steps (effective batch k * batch_size)
      b1=0.9, b2=0.999, eps=1e-8))
  c.schedule = schedule_config()
  c.label_smoothing = 0.0
  # Mixup/cutmix of each training batch with its reverse (train/mix.py), on device.
  c.mix = ml_collections.ConfigDict(dict(
      mixup_alpha=0.0, cutmix_alpha=0.0,   # Beta(alpha, alpha); 0 turns one off
      switch_prob=0.5,                     # cutmix's share when both are on
      prob=1.0))                           # the chance a batch is mixed at all
  c.ema_decay = 0.0            # > 0: keep a model EMA (state.ema_params), evaluated as eval/ema_*
  c.compute_dtype = "float32"  # or bfloat16: params stay float32

  c.log_every_steps = 50
  c.eval_every_steps = 0        # 0: once per epoch
  c.checkpoint_every_steps = 0  # 0: once per epoch
  c.keep_checkpoints = 3
  c.async_checkpoint = True
  c.progress = True
  # True: when nothing can be restored but the workdir holds an earlier run's
  # history (metrics, TensorBoard events, quarantined checkpoints), start again
  # from step 0 and move that history to <workdir>/history/<n>/ (kept). Without
  # it such a run stops with an error. Never discards a usable checkpoint.
  c.restart = False
  # Start from another run's newest checkpoint or a converted checkpoint
  # (python -m neurojax.convert.torchvision): its params and BN statistics,
  # checked leaf by leaf, when the workdir has nothing to resume. Leaves whose
  # path (e.g. "params/fc/kernel") init_from_exclude matches keep their
  # fresh init ("^params/fc/": fine-tune with a new classifier).
  c.init_from = ""
  c.init_from_exclude = ""

  c.sparsity = sparsity_config()
  # Each method's own section (config.prune, config.generations, config.kakuritsu),
  # from its module's config(): see neurojax/methods/__init__.py.
  # (imported here: the methods import this module)
  from neurojax import methods  # pylint: disable=g-import-not-at-top
  for section, defaults in methods.sections().items():
    c[section] = defaults

  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1, process_id=0, coordinator_address="", auto=False))
  # The train state's layout over the devices (neurojax/parallel.py):
  # "replicated", or "fsdp": each leaf a rule's regex matches (its path, e.g.
  # "params/stage4/.*kernel" or "opt_state/.*") is sharded over the devices
  # on its largest dimension they divide, if it has >= min_size elements.
  # rules=() with "fsdp" shards every leaf; ("regex", "replicated") exempts.
  c.parallel = ml_collections.ConfigDict(dict(state="replicated", rules=(), min_size=2**14))
  return c


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> list[str]:
  """The names of the configs that ship in the package (neurojax/configs)."""
  return sorted(n[:-3] for n in os.listdir(CONFIGS_DIR) if n.endswith(".py") and n[0] != "_")


def load_shipped(name: str, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a shipped config by name, e.g.
  `load_shipped("dnr_flowers", "ke")`: what `--config=dnr_flowers:ke` loads."""
  path = os.path.join(CONFIGS_DIR, name.removesuffix(".py") + ".py")
  if not os.path.isfile(path):
    close = difflib.get_close_matches(name, shipped_configs(), n=1)
    raise ConfigError(f"no shipped config {name!r}" + (
        f"; did you mean {close[0]!r}?" if close else
        f"; the shipped configs are: {', '.join(shipped_configs())}"))
  return load_config_file(path, *args)


def load_config_file(path: str, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a config file, e.g. `load_config_file("configs/default.py")`."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"neurojax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def cifar_data(config, dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """Sets config.data to TFDS CIFAR-10 or -100 (train; test for eval) with
  the usual augmentation: random crop 32 with 4 px zero padding, flip, and
  the per-channel mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994,
  0.2010). Returns `config`."""
  d = config.data
  d.source, d.name, d.train_split, d.eval_split = "tfds", dataset, "train", "test"
  d.crop_padding, d.flip = 4, True
  d.mean, d.std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
  return config


def sibling_config(config_file: str, name: str, *args) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py next to `config_file` (for derived configs)."""
  return load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), *args)


def _choice(value, field: str, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not valid; choose one of: "
                      f"{', '.join(map(str, choices))}")


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(config, field: str, low=None, high=None, *, low_open: bool = False,
            high_open: bool = False, integer: bool = False, hint: str = "") -> None:
  """Raises ConfigError unless config.<field> is a finite number (an integer
  with `integer`) in the range given by low/high (open ends with *_open)."""
  value = _get(config, field)
  if low is not None and high is not None:
    valid = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  elif low is not None:
    valid = f"{'>' if low_open else '>='} {low}"
  elif high is not None:
    valid = f"{'<' if high_open else '<='} {high}"
  else:
    valid = "a finite number"
  if integer and not _is_int(value):
    raise ConfigError(f"config.{field}={value!r} must be an integer {valid}{hint}")
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f"config.{field}={value!r} must be a number {valid}{hint}")
  if not math.isfinite(value):
    raise ConfigError(f"config.{field}={value!r} is not a finite number; it must be "
                      f"{valid}{hint}")
  if ((low is not None and (value < low or (low_open and value == low))) or
      (high is not None and (value > high or (high_open and value == high)))):
    raise ConfigError(f"config.{field}={value!r} must be {valid}{hint}")


def _positive(config, *fields, allow_zero=False) -> None:
  for field in fields:
    _number(config, field, 0, low_open=not allow_zero)


def _non_finite(node, prefix: str = "config"):
  """(field, value) of the first NaN or infinite number anywhere in `node`."""
  items = node.items() if isinstance(node, (dict, ml_collections.ConfigDict)) else (
      enumerate(node) if isinstance(node, (tuple, list)) else ())
  for key, value in items:
    name = f"{prefix}.{key}" if isinstance(key, str) else f"{prefix}[{key}]"
    if isinstance(value, (dict, ml_collections.ConfigDict, tuple, list)):
      found = _non_finite(value, name)
      if found:
        return found
    elif (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and not math.isfinite(value)):
      return name, value
  return None


def check_number(config, field: str, low=None, high=None, **options) -> None:
  """Raises ConfigError unless config.<field> is a finite number in range
  (`low`, `high`; options: low_open, high_open, integer, hint), naming the
  field: for the methods' checks of their own sections."""
  _number(config, field, low, high, **options)


def validate_schedule(config, field: str) -> None:
  """Checks the schedule section config.<field> (`schedule_config()`'s
  fields), e.g. field="schedule" or "prune.retrain.schedule"; every error
  names the field's whole path."""
  _choice(_get(config, field).name, f"{field}.name", SCHEDULES)
  _positive(config, f"{field}.lr", f"{field}.warmup_epochs", allow_zero=True)
  _number(config, f"{field}.final_lr_fraction", 0, 1,
          hint=" (the cosine schedule ends at lr * final_lr_fraction)")
  _number(config, f"{field}.gamma", 0, low_open=True,
          hint=" (the lr factor at each milestone or step, e.g. 0.1)")
  _number(config, f"{field}.step_epochs", 0, low_open=True,
          hint=" (the step schedule's period in epochs)")
  for i, milestone in enumerate(_get(config, field).milestones):
    if (isinstance(milestone, bool) or not isinstance(milestone, numbers.Real)
        or not math.isfinite(milestone) or milestone < 0):
      raise ConfigError(f"config.{field}.milestones[{i}]={milestone!r} must be an epoch >= 0, "
                        f"e.g. milestones=(80, 120)")


def _regex(config, field: str) -> None:
  try:
    re.compile(_get(config, field))
  except re.error as e:
    raise ConfigError(f"config.{field}={_get(config, field)!r} is not a valid regular "
                      f"expression: {e}") from None


def validate_sparsity(config) -> None:
  """Checks config.sparsity (`sparsity_config()`), for the methods that use
  it; the choice of score and selection is the pruning method's to check."""
  for field in ("include", "exclude"):
    _regex(config, f"sparsity.{field}")
  _number(config, "sparsity.quality", 0, hint=" (selection='std' keeps |w| > quality * std(w))")
  _number(config, "sparsity.snip_batches", 0, integer=True,
          hint=" (0: ceil(steps per epoch / 32))")


def check_device_count(config, device_count: int) -> None:
  """Raises ConfigError unless the global batch sizes split evenly over
  `device_count` devices (`jax.device_count()`, all processes together)."""
  for field in ("batch_size", "eval_batch_size"):
    try:
      parallel.check_batch_size(config[field], field, device_count)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def validate(config, device_count: int | None = None) -> None:
  """Raises ConfigError for unknown names and bad values, before any compile.

  With `device_count` (`jax.device_count()`, after `parallel.initialize`),
  also checks that the batch sizes split evenly over the devices.
  """
  from neurojax import data, methods  # pylint: disable=g-import-not-at-top
  _choice(config.method, "method", methods.names())
  _choice(config.model.name, "model.name", models.names())
  valid = models.options(config.model.name)
  for key in config.model:
    if key != "name" and key not in valid:
      raise ConfigError(f"config.model.{key} is not an option of model {config.model.name!r}; "
                        f"its options are: {', '.join(valid) or '(none)'}")
  try:    # a model's factory checks its option values
    models.get_model(config.model.name, num_classes=2,
                     **{k: v for k, v in config.model.items() if k != "name"})
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _choice(config.compute_dtype, "compute_dtype", tuple(models.DTYPES))
  _choice(config.optimizer.name, "optimizer.name", OPTIMIZERS)
  for field in ("weight_decay_exclude", "freeze"):
    _regex(config, f"optimizer.{field}")
  if "init_from" in config:
    if not isinstance(config.init_from, str):
      raise ConfigError(f"config.init_from={config.init_from!r} must be a directory path (str)")
    _regex(config, "init_from_exclude")
  for i, group in enumerate(config.optimizer.lr_groups):
    if (len(group) != 2 or not isinstance(group[0], str)
        or not isinstance(group[1], (int, float)) or not math.isfinite(group[1])
        or group[1] < 0):
      raise ConfigError(f"config.optimizer.lr_groups[{i}]={tuple(group)!r} must be a "
                        f"(regex, multiplier >= 0) pair, e.g. ('quadratic|ln_hw', 10.0)")
    try:
      re.compile(group[0])
    except re.error as e:
      raise ConfigError(f"config.optimizer.lr_groups[{i}]: {group[0]!r} is not a valid "
                        f"regular expression: {e}") from None
  _positive(config, "batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints")
  _positive(config, "num_steps", "num_epochs", "eval_every_steps", "checkpoint_every_steps",
            "optimizer.weight_decay", allow_zero=True)
  validate_schedule(config, "schedule")
  if not config.num_steps and not config.num_epochs:
    raise ConfigError("set config.num_epochs or config.num_steps to a positive number")
  for field in ("mix.mixup_alpha", "mix.cutmix_alpha"):
    _positive(config, field, allow_zero=True)
  for field, value in (("mix.switch_prob", config.mix.switch_prob),
                       ("mix.prob", config.mix.prob)):
    if not 0.0 <= value <= 1.0:
      raise ConfigError(f"config.{field}={value!r} must be in [0, 1]")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"config.ema_decay={config.ema_decay!r} must be in [0, 1) "
                      f"(0 turns the model EMA off; e.g. 0.9998)")
  if not isinstance(config.optimizer.grad_accum_steps, int) or \
      config.optimizer.grad_accum_steps < 1:
    raise ConfigError(f"config.optimizer.grad_accum_steps={config.optimizer.grad_accum_steps!r} "
                      f"must be an integer >= 1 (the effective batch is grad_accum_steps * "
                      f"batch_size)")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1)")
  opt = "optimizer"
  _number(config, f"{opt}.momentum", 0, 1, high_open=True,
          hint=" (0: plain SGD; the usual value is 0.9)")
  _number(config, f"{opt}.b1", 0, 1, high_open=True, hint=" (Adam's default is 0.9)")
  _number(config, f"{opt}.b2", 0, 1, high_open=True, hint=" (Adam's default is 0.999)")
  _number(config, f"{opt}.eps", 0, low_open=True, hint=" (Adam's default is 1e-8)")
  for field in ("num_steps", "eval_every_steps", "checkpoint_every_steps"):
    _number(config, field, 0, integer=True)
  for field in ("log_every_steps", "keep_checkpoints"):
    _number(config, field, 1, integer=True)
  dist = config.distributed
  if not dist.auto:
    _number(config, "distributed.num_processes", 1, integer=True)
    _number(config, "distributed.process_id", 0, dist.num_processes, high_open=True,
            integer=True)
  if dist.num_processes > 1 and not dist.coordinator_address:
    raise ConfigError("config.distributed.num_processes > 1 needs "
                      "config.distributed.coordinator_address (e.g. 'localhost:12345')")
  try:
    parallel.validate_parallel(config.parallel)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  found = _non_finite(config)
  if found:
    field, value = found
    try:
      default = f" (its default is {_get(base_config(config.model.name), field[7:])!r})"
    except (KeyError, AttributeError, TypeError, ValueError):
      default = ""
    raise ConfigError(f"{field}={value!r} is not a finite number; NaN and inf are never valid "
                      f"config values{default}")
  try:
    data.validate_config(config)
    methods.validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if device_count is not None:
    check_device_count(config, device_count)
