"""The set-up every method shares: mesh, data, model, optimizer, state,
checkpoints and writers, restored from the workdir when a run resumes.

An `Experiment` is not fixed for the whole run: `rebuild(model_spec)`
switches it to another model (new shapes, a new optimizer; the jitted steps
follow), e.g. at a phase start (`train.phases`). Each checkpoint stores the
model spec (`models.spec`), so `setup` and `load_run` rebuild the model a
run has at its newest checkpoint from the workdir alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from neurojax import models, parallel, rng as rng_lib
from neurojax.train import checkpoint as ckpt_lib
from neurojax.train import init_from as init_from_lib
from neurojax import losses
from neurojax.nn import fastpath
from neurojax.train import workdir as workdir_lib
from neurojax.train import steps as steps_lib
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.state import TrainState, create_train_state, init_variables
from neurojax.train.writers import MetricWriter, Progress

# Fields that may change between the runs of one workdir without changing
# results; a method adds its own (`setup(resume_safe=...)`).
RESUME_SAFE_FIELDS = ("progress", "log_every_steps", "distributed", "parallel",
                      "async_checkpoint", "data.num_threads", "data.prefetch", "keep_checkpoints",
                      "restart", "init_from", "init_from_exclude")


class ConfigMismatchError(RuntimeError):
  pass


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  data: object
  model_spec: dict
  model: object
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  state: TrainState
  checkpointer: ckpt_lib.Checkpointer
  writer: MetricWriter
  num_steps: int
  resumed_from: int | None
  meta: dict | None = None        # the restored checkpoint's meta
  lock: workdir_lib.WorkdirLock | None = None    # process 0's hold on the workdir
  optimizer: Callable | None = None   # (config, schedule, params) -> tx; None: make_optimizer
  phase_ends: dict = dataclasses.field(default_factory=dict)   # {phase: step}, train.phases
  _steps: dict = dataclasses.field(default_factory=dict)
  _retired_compiles: int = 0      # those of the models before a rebuild

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

  def rebuild(self, model_spec: dict) -> None:
    """Switches the run to the model of `model_spec` (e.g. other widths) and
    a fresh optimizer for its params; the jitted steps are rebuilt on their
    next use. Make the matching state with `new_state`."""
    self.model_spec = model_spec
    self.model, self.schedule, self.tx = build_model_and_optimizer(
        self.config, model_spec, self.data.info.image_shape, self.steps_per_epoch,
        self.num_steps, self.optimizer)
    self._retired_compiles += self.train_step_compiles()
    self._steps.clear()

  def make_tx(self, schedule, params) -> optax.GradientTransformation:
    """The run's kind of optimizer (the method's, or `make_optimizer`) on
    another lr schedule, e.g. for one phase."""
    if self.optimizer is not None:
      return self.optimizer(self.config, schedule, params)
    return make_optimizer(self.config.optimizer, schedule, params)

  def new_state(self, like: TrainState, params, batch_stats, masks=None) -> TrainState:
    """A state for the current model with these variables, `like`'s step and
    rng, and a fresh optimizer state (and EMA, if the run keeps one)."""
    state = TrainState(step=like.step, params=params, batch_stats=batch_stats,
                       opt_state=self.tx.init(params), rng=like.rng, masks=masks,
                       ema_params=jax.tree.map(jnp.copy, params)
                       if self.config.ema_decay else None)
    return self.place(state)

  @property
  def rules(self) -> parallel.Rules | None:
    """How the state is laid out over the devices (`config.parallel`)."""
    return parallel.state_rules(self.config.parallel)

  def place(self, state):
    """`state` (a TrainState or any part of one with the same paths) on
    the mesh, replicated or sharded as `config.parallel` says: the layout
    the train step keeps, so that it does not recompile."""
    return parallel.place(state, self.mesh, self.rules)

  def checkpoint_meta(self, step: int, state: TrainState) -> dict:
    """The data position of `step`, and what `load_run` needs to rebuild the
    run: the model spec, the image shape, whether there are masks."""
    info = self.data.info
    return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "num_classes": info.num_classes,
            "image_shape": list(info.image_shape), "masks": state.masks is not None,
            "model": self.model_spec, "config": flatten_config(self.config),
            "phase_ends": dict(self.phase_ends)}

  def save(self, step: int, state: TrainState) -> None:
    self.checkpointer.save(step, state, self.checkpoint_meta(step, state))

  def progress(self, desc: str = "train", total: int | None = None) -> Progress:
    return Progress(total or self.num_steps, self.start_step, self.config.batch_size, desc,
                    enabled=self.config.progress)

  def train_step(self, tx=None, objective: steps_lib.Objective | None = None):
    """The jitted train step of `config` (label smoothing, mixup/cutmix,
    model EMA, gradient accumulation) for the current model, with `tx`
    (default: the run's optimizer) and the method's `objective` (default:
    cross-entropy). Built once per (model, tx, objective) and reused."""
    c = self.config
    tx = tx or self.tx
    key = (id(self.model), id(tx), id(objective))
    if key not in self._steps:     # the entry keeps its objects alive: their ids stay theirs
      self._steps[key] = (self.model, tx, objective, steps_lib.jit_train_step(
          steps_lib.train_step_fn(self.model, tx, label_smoothing=c.label_smoothing,
                                  objective=objective, mix=c.mix, ema_decay=c.ema_decay),
          self.mesh, fastpath.compiler_options(self.model), self.rules))
    return self._steps[key][-1]

  def train_step_compiles(self) -> int:
    """XLA compilations of the train steps so far in this process, also of
    the models before a `rebuild` (one per model, optimizer and objective
    when nothing changes shape between steps)."""
    return self._retired_compiles + sum(
        entry[-1]._cache_size() for entry in self._steps.values())  # pylint: disable=protected-access

  def evaluator(self, objective: steps_lib.Objective | None = None, predict=None,
                samples: int = 1):
    """`evaluate(step, state)`: test metrics over the whole eval split, written
    under eval/ (a `Hook` function); with model EMA also the EMA params', as
    eval/ema_*, in the same pass. `predict` and `samples` as in
    `steps.eval_step_fn` (a stochastic eval draws from rng.EVAL's keys).
    Its `.steps` lists the steps evaluated; `.last` holds the latest eval's
    sums ({name: sums}, host arrays: the confidence bins of a reliability
    diagram among them)."""
    built = [None, None]      # (model, its jitted eval step)

    def evaluate(step: int, state: TrainState) -> dict:
      if built[0] is not self.model:     # first use, or after a rebuild
        built[:] = [self.model, steps_lib.jit_eval_step(steps_lib.eval_step_fn(
            self.model, objective=objective, predict=predict, samples=samples,
            both=bool(self.config.ema_decay)), self.mesh,
            fastpath.compiler_options(self.model))]
      totals = steps_lib.sum_over_batches(built[1], state,
                                          self.data.eval.batches(), self.mesh,
                                          rng_lib.purpose_key(self.config.seed, rng_lib.EVAL))
      metrics = {(f"{name}_{k}" if name else k): v for name, sums in totals.items()
                 for k, v in losses.means(sums).items()}
      self.writer.write(step, metrics, prefix="eval/")
      evaluate.steps.append(step)
      evaluate.last = totals
      logging.info("eval at step %d: %s", step, metrics)
      return metrics
    evaluate.steps = []
    evaluate.last = None
    return evaluate

  def close(self, progress: Progress | None = None) -> None:
    """Ends a run, also on error: waits for a pending save (never leaves one
    half-done), flushes the metrics and frees the workdir. Idempotent."""
    if progress is not None:
      progress.close()
    self.checkpointer.wait()
    self.writer.flush()
    self.writer.close()
    self.checkpointer.close()
    if self.lock is not None:
      self.lock.release()


def total_steps(config, steps_per_epoch: int) -> int:
  return config.num_steps or int(math.ceil(config.num_epochs * steps_per_epoch))


def config_model_spec(config, num_classes: int) -> dict:
  """The spec of `config.model` for `num_classes` classes."""
  return models.spec(config.model.name, num_classes=num_classes, dtype=config.compute_dtype,
                     **{k: v for k, v in config.model.items() if k != "name"})


def build_model_and_optimizer(config, model_spec: dict, image_shape, steps_per_epoch: int,
                              num_steps: int, optimizer=None):
  """(model, lr schedule, optax transformation) for `model_spec` and `config`;
  `optimizer(config, schedule, params)` builds the transformation (default
  `make_optimizer(config.optimizer, ...)`)."""
  model = models.build(model_spec)
  schedule = make_schedule(config.schedule, steps_per_epoch, num_steps)
  abstract_params = jax.eval_shape(lambda k: init_variables(model, k, image_shape)[0],
                                   jax.random.PRNGKey(0))
  tx = (optimizer(config, schedule, abstract_params) if optimizer is not None
        else make_optimizer(config.optimizer, schedule, abstract_params))
  return model, schedule, tx


def _newest_meta(checkpointer) -> dict | None:
  """The meta of the newest checkpoint, or None (none, or unreadable)."""
  for step in reversed(checkpointer.all_steps()):
    try:
      return checkpointer.read_meta(step)
    except Exception:  # pylint: disable=broad-except   (restore_latest says why)
      return None
  return None


def _template(config, model, tx, image_shape, masks: bool, sharding=None) -> TrainState:
  state = create_train_state(model, tx, rng_lib.seed_key(config.seed), image_shape, sharding,
                             ema=bool(config.get("ema_decay", 0.0)))
  return state.replace(masks=initial_masks(config, model, state.params)) if masks else state


def load_run(workdir: str):
  """Loads a finished or interrupted run, read-only: `(config, model, state)`.

  The model is rebuilt from the newest checkpoint's model spec (so also a
  Kakuritsu head's run, or a model whose widths changed mid-run); the state
  is that checkpoint's, on this process's first device (the optimizer state
  of a method with its own optimizer comes as saved: nested dicts). E.g. in
  a notebook:
  `config, model, state = load_run("runs/default")`, then
  `model.apply({"params": state.params, ...}, images)`.
  """
  saved = workdir_lib.read_saved_config(os.path.join(workdir, "config.json"))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    if saved is None:
      raise ckpt_lib.CheckpointError(f"{workdir} has no readable config.json: is it a neurojax "
                                     f"workdir?")
    raise _no_checkpoint(workdir)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False,
                                       read_only=True)
  try:
    return _load_run(workdir, saved, checkpointer)
  finally:
    checkpointer.close()


def _no_checkpoint(workdir) -> ckpt_lib.CheckpointError:
  subruns = sorted(os.path.relpath(root, workdir) for root, _, files in os.walk(workdir)
                   if "config.json" in files and root != workdir)
  hint = f"; the runs inside it are: {', '.join(subruns)}" if subruns else ""
  return ckpt_lib.CheckpointError(f"{workdir} has no checkpoint{hint}")


def _load_run(workdir, saved, checkpointer):
  steps = checkpointer.all_steps()
  if saved is None and steps:
    saved = (_newest_meta(checkpointer) or {}).get("config")
  if saved is None:
    raise ckpt_lib.CheckpointError(f"{workdir} has no readable config.json: is it a neurojax "
                                   f"workdir?")
  config = _unflatten(saved)
  if not steps:
    raise _no_checkpoint(workdir)
  meta = checkpointer.read_meta(steps[-1])
  spec = meta.get("model") or config_model_spec(config, meta["num_classes"])
  image_shape = tuple(meta["image_shape"])
  model, _, tx = build_model_and_optimizer(config, spec, image_shape, meta["steps_per_epoch"],
                                           total_steps(config, meta["steps_per_epoch"]))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.eval_shape(lambda: _template(config, model, tx, image_shape,
                                              bool(meta.get("masks"))))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  # A method with its own optimizer (`setup(optimizer=...)`) saved another
  # optimizer state: read that one as saved (nested dicts).
  saved_opt = checkpointer.saved_tree(steps[-1]).get("opt_state")
  if saved_opt is not None and ckpt_lib.tree_difference(
      {"opt_state": saved_opt}, {"opt_state": abstract.opt_state}) is not None:
    abstract = abstract.replace(opt_state=jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), saved_opt))
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


def setup(config, workdir: str, *, data=None, with_masks: bool = False, model_spec=None,
          initial=None, resume_safe=(), optimizer=None) -> Experiment:
  """Builds everything for `config` and resumes from `workdir` if it holds a run.

  `with_masks=True` gives the fresh state all-True masks on the eligible
  weights (`config.sparsity.include/exclude`), for methods that prune.
  `model_spec` (`models.spec`) replaces the model `config.model` names;
  a checkpoint's own spec wins over both (a run whose model changed
  mid-run resumes with the changed one). `initial(state) -> state` changes
  the fresh state (e.g. loads pretrained weights) when there is no
  checkpoint to resume from. `resume_safe` adds the method's own fields
  that may change between the runs of one workdir. `optimizer(config,
  schedule, params) -> tx` replaces `make_optimizer` for the whole run
  (e.g. a method's wrapper around it that keeps a value in the optimizer
  state); `Experiment.rebuild` and `make_tx` use it too.
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
  fresh = not os.path.isdir(os.path.join(workdir, "checkpoints"))
  if config.get("init_from") and fresh:
    init_from_lib.check_source(config.init_from)   # before the new workdir holds anything
  os.makedirs(workdir, exist_ok=True)
  # Before anything reads or cleans the checkpoints: one live run per workdir.
  lock = workdir_lib.acquire(workdir) if parallel.is_main_process() else None
  try:
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         max_to_keep=config.keep_checkpoints,
                                         async_save=config.async_checkpoint)
    meta = _newest_meta(checkpointer)
    spec = ((meta or {}).get("model") or model_spec
            or config_model_spec(config, data.info.num_classes))
    model, schedule, tx = build_model_and_optimizer(
        config, spec, data.info.image_shape, data.info.steps_per_epoch, num_steps, optimizer)
    source = None          # config.init_from's variables, checked against the model
    if config.get("init_from") and meta is None:
      source = init_from_lib.load_variables(config.init_from)
      init_from_lib.check(jax.eval_shape(lambda: _template(
          config, model, tx, data.info.image_shape, with_masks)), source, config.init_from,
                          config.get("init_from_exclude", ""))
    initial = init_from_lib.initial(config, initial, source)
    # Only now, so that a config failing above leaves no config.json behind.
    check_or_save_config(config, workdir, resume_safe, (meta or {}).get("config"))
    rules = parallel.state_rules(config.parallel)
    state = parallel.place(_template(config, model, tx, data.info.image_shape, with_masks),
                           mesh, rules)
    restored = checkpointer.restore_latest(state)      # into this layout, from any other
    resumed_from = None
    if restored is None:      # never silently over an earlier run's history
      workdir_lib.check_fresh_start(workdir, config.restart,
                                    main_process=parallel.is_main_process())
      if initial is not None:
        state = initial(state)
        if state.ema_params is not None:    # the average starts from the loaded weights
          state = state.replace(ema_params=state.params)
        state = parallel.place(state, mesh, rules)
    else:
      state, meta = restored
      resumed_from = int(meta["step"])
      if meta.get("steps_per_epoch", data.info.steps_per_epoch) != data.info.steps_per_epoch:
        raise ConfigMismatchError(
            f"the checkpoint in {workdir} was written with {meta['steps_per_epoch']} steps "
            f"per epoch, but this config gives {data.info.steps_per_epoch}; use a new "
            f"--workdir.")
      logging.info("resuming from step %d (epoch %d, batch %d) in %s", resumed_from,
                   meta["epoch"], meta["batch_in_epoch"], workdir)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    logging.info("train state: %s, %.2f MiB per device of %.2f MiB", config.parallel.state,
                 parallel.per_device_bytes(state) / 2**20, total / 2**20)
    writer = MetricWriter(workdir, resume_step=resumed_from)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return Experiment(config, workdir, mesh, data, spec, model, schedule, tx, state, checkpointer,
                    writer, num_steps, resumed_from, meta if restored is not None else None,
                    lock, optimizer, dict((meta or {}).get("phase_ends") or {})
                    if restored is not None else {})


def flatten_config(config, prefix="") -> dict:
  """{"a.b": value} of a config, tuples as lists (as config.json holds it)."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def check_or_save_config(config, workdir: str, resume_safe=(), fallback: dict | None = None
                         ) -> None:
  """Saves the resolved config; on resume, refuses a config that changed
  (except in the RESUME_SAFE_FIELDS and the method's `resume_safe`). A torn
  config.json (a full disk) is compared through `fallback`, the copy in the
  newest checkpoint's meta, and rewritten."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(json.dumps(flatten_config(config)))   # nested tuples as JSON lists
  safe = RESUME_SAFE_FIELDS + tuple(resume_safe)
  saved = workdir_lib.read_saved_config(path)
  if saved is None and os.path.exists(path):
    saved = fallback
  if saved is not None:
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k)
                     and not any(k == s or k.startswith(s + ".") for s in safe))
    if changed:
      diff = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise ConfigMismatchError(
          f"{workdir} holds a run with a different config ({diff}). Resuming would mix two "
          f"experiments. Use a new --workdir, or move {workdir} away to start again.")
  if parallel.is_main_process():
    with open(path + ".tmp", "w") as f:
      json.dump(current, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
