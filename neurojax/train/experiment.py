"""The set-up every method shares: mesh, data, model, optimizer, state,
checkpoints and writers, restored from the workdir when a run resumes."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import ml_collections
import optax
from absl import logging

from neurojax import models, parallel
from neurojax.train import checkpoint as ckpt_lib
from neurojax.train import losses
from neurojax.train import steps as steps_lib
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.state import TrainState, create_train_state, init_variables
from neurojax.train.writers import MetricWriter, Progress

# Fields that may change between the runs of one workdir without changing results.
RESUME_SAFE_FIELDS = ("progress", "log_every_steps", "distributed", "async_checkpoint",
                      "data.num_threads", "data.prefetch", "keep_checkpoints",
                      "kakuritsu.eval_p", "kakuritsu.eval_dropout")


class ConfigMismatchError(RuntimeError):
  pass


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  data: object
  model: object
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  state: TrainState
  checkpointer: ckpt_lib.Checkpointer
  writer: MetricWriter
  num_steps: int
  resumed_from: int | None

  @property
  def steps_per_epoch(self) -> int:
    return self.data.info.steps_per_epoch

  def every(self, steps: int) -> int:
    """A period in steps; 0 means once per epoch."""
    return steps or self.steps_per_epoch

  @property
  def start_step(self) -> int:
    """The step this run starts from (0, or the restored checkpoint's)."""
    return self.resumed_from or 0

  def checkpoint_meta(self, step: int, state: TrainState) -> dict:
    """The data position of `step`, and what `load_run` needs to rebuild the model."""
    info = self.data.info
    return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "num_classes": info.num_classes,
            "image_shape": list(info.image_shape), "masks": state.masks is not None}

  def save(self, step: int, state: TrainState) -> None:
    self.checkpointer.save(step, state, self.checkpoint_meta(step, state))

  def progress(self, desc: str = "train", total: int | None = None) -> Progress:
    return Progress(total or self.num_steps, self.start_step, self.config.batch_size, desc,
                    enabled=self.config.progress)

  def train_step(self, tx=None, schedule=None):
    """The jitted train step of `config` (label smoothing, mixup/cutmix,
    model EMA, gradient accumulation), with `tx` (default: the run's
    optimizer) and `schedule` (the lr metric; default: the run's)."""
    c = self.config
    return steps_lib.jit_train_step(steps_lib.train_step_fn(
        self.model, tx or self.tx, label_smoothing=c.label_smoothing,
        schedule=schedule or self.schedule, mix=c.mix, ema_decay=c.ema_decay), self.mesh)

  def evaluator(self):
    """`evaluate(step, state)`: test metrics over the whole eval split, written
    under eval/ (a `Hook` function); with model EMA also the EMA params', as
    eval/ema_*. Its `.steps` lists the steps evaluated."""
    plain = steps_lib.eval_step_fn(self.model)
    ema = steps_lib.eval_step_fn(self.model, ema=True) if self.config.ema_decay else None

    def both(state, batch):      # one pass over the eval data, for both param sets
      return {"": plain(state, batch), **({"ema_": ema(state, batch)} if ema else {})}
    eval_step = steps_lib.jit_eval_step(both, self.mesh)

    def evaluate(step: int, state: TrainState) -> dict:
      totals = steps_lib.sum_over_batches(eval_step, state, self.data.eval.batches(), self.mesh)
      metrics = {prefix + k: v for prefix, sums in totals.items()
                 for k, v in losses.means(sums).items()}
      self.writer.write(step, metrics, prefix="eval/")
      evaluate.steps.append(step)
      logging.info("eval at step %d: %s", step, metrics)
      return metrics
    evaluate.steps = []
    return evaluate

  def close(self, progress: Progress | None = None) -> None:
    """Ends a run, also on error: waits for a pending save (never leaves one
    half-done) and flushes the metrics."""
    if progress is not None:
      progress.close()
    self.checkpointer.wait()
    self.writer.close()


def total_steps(config, steps_per_epoch: int) -> int:
  return config.num_steps or int(math.ceil(config.num_epochs * steps_per_epoch))


def build_model_and_optimizer(config, num_classes: int, image_shape, steps_per_epoch: int,
                              num_steps: int, model=None):
  """(model, lr schedule, optax transformation) for `config`; `model`, if
  given, replaces `config.model`'s."""
  if model is None:
    model_options = {k: v for k, v in config.model.items() if k != "name"}
    model = models.get_model(config.model.name, num_classes=num_classes,
                             dtype=config.compute_dtype, **model_options)
  schedule = make_schedule(config.schedule, steps_per_epoch, num_steps)
  abstract_params = jax.eval_shape(lambda k: init_variables(model, k, image_shape)[0],
                                   jax.random.PRNGKey(0))
  return model, schedule, make_optimizer(config.optimizer, schedule, abstract_params)


def load_run(workdir: str):
  """Loads a finished or interrupted run, read-only: `(config, model, state)`.

  The state is the newest good checkpoint in `<workdir>/checkpoints`, on
  this process's first device. E.g. in a notebook:
  `config, model, state = load_run("runs/default")`, then
  `model.apply({"params": state.params, ...}, images)`.
  """
  with open(os.path.join(workdir, "config.json")) as f:
    config = _unflatten(json.load(f))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  steps = checkpointer.all_steps()
  if not steps:
    hint = (f"; a kakuritsu run keeps its heads' runs in {workdir}/heads/<K|D|W>"
            if config.method == "kakuritsu" else "")
    raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoint{hint}")
  meta = checkpointer.read_meta(steps[-1])
  model = None
  if config.method == "kakuritsu":     # a head's run: the backbone + that head
    from neurojax.methods import kakuritsu  # pylint: disable=g-import-not-at-top
    model = kakuritsu.head_model(config, config.kakuritsu.heads[0], meta["num_classes"])
  model, _, tx = build_model_and_optimizer(
      config, meta["num_classes"], tuple(meta["image_shape"]), meta["steps_per_epoch"],
      total_steps(config, meta["steps_per_epoch"]), model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  def template(key):
    state = create_train_state(model, tx, key, tuple(meta["image_shape"]),
                               ema=bool(config.get("ema_decay", 0.0)))
    if not meta.get("masks"):
      return state
    return state.replace(masks=initial_masks(config, model, state.params))
  abstract = jax.eval_shape(template, jax.random.PRNGKey(0))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  state, _ = checkpointer.restore_latest(abstract, quarantine=False)   # read-only
  return config, model, state


def initial_masks(config, model, params):
  """All-True masks on the weights `config.sparsity` makes eligible: the
  model's channel groups for structured (`channels`) selection, else the
  `include`/`exclude` regexes."""
  from neurojax import sparsity  # pylint: disable=g-import-not-at-top
  if config.sparsity.selection == "channels":
    return sparsity.group_masks(params, models.channel_groups(config.model.name, model))
  return sparsity.dense_masks(params, config.sparsity.include, config.sparsity.exclude)


def _unflatten(flat: dict) -> ml_collections.ConfigDict:
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return ml_collections.ConfigDict(tree)


def setup(config, workdir: str, *, data=None, with_masks: bool = False, model=None,
          initial=None) -> Experiment:
  """Builds everything for `config` and resumes from `workdir` if it holds a run.

  `with_masks=True` gives the fresh state all-True masks on the eligible
  weights (`config.sparsity.include/exclude`), for methods that prune.
  `model` replaces the one `config.model` names; `initial(state) -> state`
  changes the fresh state (e.g. loads pretrained weights) when there is no
  checkpoint to resume from.
  """
  # pylint: disable=g-import-not-at-top
  from neurojax.config import validate
  from neurojax.data import build_data
  validate(config)
  mesh = parallel.make_mesh()
  logging.info("process %d of process_count=%d; %d devices (%d local); mesh %s",
               jax.process_index(), jax.process_count(), jax.device_count(),
               jax.local_device_count(), dict(mesh.shape))
  parallel.check_batch_size(config.batch_size, "batch_size", mesh)
  parallel.check_batch_size(config.eval_batch_size, "eval_batch_size", mesh)
  data = data or build_data(config)
  num_steps = total_steps(config, data.info.steps_per_epoch)
  model, schedule, tx = build_model_and_optimizer(
      config, data.info.num_classes, data.info.image_shape, data.info.steps_per_epoch, num_steps,
      model)
  # Only now, so that a config failing above leaves no config.json behind.
  os.makedirs(workdir, exist_ok=True)
  check_or_save_config(config, workdir)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), data.info.image_shape,
                             parallel.replicated(mesh), ema=bool(config.ema_decay))
  if with_masks:
    state = state.replace(masks=initial_masks(config, model, state.params))

  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=config.keep_checkpoints,
                                       async_save=config.async_checkpoint)
  restored = checkpointer.restore_latest(state)
  resumed_from = None
  if restored is None and initial is not None:
    state = initial(state)
    if state.ema_params is not None:    # the average starts from the loaded weights
      state = state.replace(ema_params=state.params)
    state = jax.device_put(state, parallel.replicated(mesh))
  if restored is not None:
    state, meta = restored
    resumed_from = int(meta["step"])
    if meta.get("steps_per_epoch", data.info.steps_per_epoch) != data.info.steps_per_epoch:
      raise ConfigMismatchError(
          f"the checkpoint in {workdir} was written with {meta['steps_per_epoch']} steps per "
          f"epoch, but this config gives {data.info.steps_per_epoch}; use a new --workdir.")
    logging.info("resuming from step %d (epoch %d, batch %d) in %s", resumed_from,
                 meta["epoch"], meta["batch_in_epoch"], workdir)
  writer = MetricWriter(workdir, resume_step=resumed_from)
  return Experiment(config, workdir, mesh, data, model, schedule, tx, state, checkpointer,
                    writer, num_steps, resumed_from)


def _flatten(config, prefix="") -> dict:
  out = {}
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def check_or_save_config(config, workdir: str) -> None:
  """Saves the resolved config; on resume, refuses a config that changed."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(_flatten(config)))   # nested tuples as JSON lists
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k)
                     and not any(k == s or k.startswith(s + ".") for s in RESUME_SAFE_FIELDS))
    if changed:
      diff = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise ConfigMismatchError(
          f"{workdir} holds a run with a different config ({diff}). Resuming would mix two "
          f"experiments. Use a new --workdir, or move {workdir} away to start again.")
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(current, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
