"""The base experiment config and its validation.

Every config file in `configs/` starts from `base_config()`, so every knob
exists in every experiment and can be overridden on the command line as
`--config.a.b=value`. `validate(config)` runs before anything is built or
compiled; each error names the field, the bad value and the valid choices.
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections

from neurojax import models
from neurojax.train.optimizers import OPTIMIZERS
from neurojax.train.schedules import SCHEDULES


class ConfigError(ValueError):
  pass


def model_config(name: str) -> ml_collections.ConfigDict:
  """`config.model` for model `name`: its name and all its options at their defaults."""
  return ml_collections.ConfigDict({"name": name, **models.default_options(name)})


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
  c.schedule = ml_collections.ConfigDict(dict(
      name="cosine", lr=0.05, warmup_epochs=0.0, final_lr_fraction=0.0, milestones=(0,),
      gamma=0.1, step_epochs=30.0))
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

  # Which weights masks cover (regexes on '/'-joined param paths), and the
  # pruning schedule of method="prune".
  c.sparsity = ml_collections.ConfigDict(dict(
      include=r"(^|/)kernel$", exclude="",
      score="magnitude",            # magnitude | snip | random | fpgm
      selection="global",           # global | per_layer | std | channels
      targets=(0.5, 0.75, 0.9),     # fraction pruned after each round (one entry: one-shot)
      quality=1.0,                  # selection="std": keep |w| > quality * std(w)
      retrain_epochs=4.0,           # per round, with a fresh optimizer and schedule
      retrain_lr=0.01,
      snip_batches=1))

  # method="generations": DNR, KE, LLF, layer-wise reinit, the long baseline.
  c.generations = ml_collections.ConfigDict(dict(
      policy="dnr",                 # dnr | ke | llf | layerwise | none
      num_generations=3,            # each of num_epochs, with a fresh optimizer and schedule
      keep=0.8,                     # dnr: keep the 80% most salient (SNIP) weights
      snip_batches=0,               # dnr: 0 = ceil(batches per epoch / 32)
      split_rate=0.5,               # ke: the fraction of channels kept
      reset_layer="layer4"))        # llf: re-draw from this stage on

  # method="kakuritsu": gated heads (K, D, W) on a backbone, and the eval matrix.
  c.kakuritsu = ml_collections.ConfigDict(dict(
      backbone="",                  # a converted torchvision checkpoint, a workdir, or "random"
      pretrain_epochs=0.0,          # > 0: train config.model here first, as the backbone
      pretrain_lr=0.0,              # its lr (0: schedule.lr)
      pretrain_schedule="",         # its schedule.name ("": schedule.name)
      train_backbone=False,         # True: train the whole network (from scratch, or fine-tune)
      backbone_bn="batch",          # batch (the original: BN in train mode) | running
      heads=("K", "D", "W"),
      hidden=1000,                  # the heads' hidden width
      p=0.5,                        # K's keep probability
      dropout=0.5,                  # D's dropout rate
      eval_p=0.5,                   # the "kakuritsu" eval mode's keep probability
      eval_dropout=0.5))            # the "dropout" eval mode's rate

  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1, process_id=0, coordinator_address="", auto=False))
  return c


def load_config_file(path: str, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a config file, e.g. `load_config_file("configs/default.py")`."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"neurojax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def sibling_config(config_file: str, name: str, *args) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py next to `config_file` (for derived configs)."""
  return load_config_file(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"), *args)


def _choice(value, field: str, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not valid; choose one of: "
                      f"{', '.join(map(str, choices))}")


def _positive(config, *fields, allow_zero=False) -> None:
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if value < 0 or (value == 0 and not allow_zero):
      raise ConfigError(f"config.{field}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(config) -> None:
  """Raises ConfigError for unknown names and bad values, before any compile."""
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
  _choice(config.schedule.name, "schedule.name", SCHEDULES)
  for field in ("weight_decay_exclude", "freeze"):
    try:
      re.compile(config.optimizer[field])
    except re.error as e:
      raise ConfigError(f"config.optimizer.{field}={config.optimizer[field]!r} is not a valid "
                        f"regular expression: {e}") from None
  for i, group in enumerate(config.optimizer.lr_groups):
    if (len(group) != 2 or not isinstance(group[0], str)
        or not isinstance(group[1], (int, float)) or group[1] < 0):
      raise ConfigError(f"config.optimizer.lr_groups[{i}]={tuple(group)!r} must be a "
                        f"(regex, multiplier >= 0) pair, e.g. ('quadratic|ln_hw', 10.0)")
    try:
      re.compile(group[0])
    except re.error as e:
      raise ConfigError(f"config.optimizer.lr_groups[{i}]: {group[0]!r} is not a valid "
                        f"regular expression: {e}") from None
  _positive(config, "batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints")
  _positive(config, "num_steps", "num_epochs", "eval_every_steps", "checkpoint_every_steps",
            "schedule.lr", "schedule.warmup_epochs", "optimizer.weight_decay", allow_zero=True)
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
  if config.distributed.num_processes > 1 and not config.distributed.coordinator_address:
    raise ConfigError("config.distributed.num_processes > 1 needs "
                      "config.distributed.coordinator_address (e.g. 'localhost:12345')")
  try:
    data.validate_config(config)
    methods.validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
