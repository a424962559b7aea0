"""Pruning with retraining: Han et al.'s iterative magnitude pruning, one-shot
pruning, SNIP and random scores, and FPGM structured filter pruning.

    train the dense network for num_epochs
    for target in sparsity.targets:                 # fraction of weights pruned
        scores <- score(params)                     # pruned weights score -inf
        masks  <- select(scores, keep 1 - target)
        params <- params * masks; a fresh optimizer and lr schedule
        retrain for retrain_epochs with the masks held fixed
        record sparsity, nonzero weights, compression and test accuracy

One entry in `targets` is one-shot pruning. Masks live in the train state,
so every phase checkpoints and resumes exactly; the optimizer is wrapped in
`sparsity.masked`, so pruned weights and their moments stay exactly 0.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from neurojax import sparsity as sp
from neurojax.plots import plot_accuracy_vs_sparsity
from neurojax.train import steps as steps_lib
from neurojax.train.experiment import setup
from neurojax.train.loop import Hook, fit
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.writers import format_table, read_metrics

SCORES = ("magnitude", "snip", "random", "fpgm")
SELECTIONS = ("global", "per_layer", "std", "channels")


def validate(config) -> None:
  s = config.sparsity
  if s.score not in SCORES:
    raise ValueError(f"config.sparsity.score={s.score!r} is not valid; choose one of: "
                     f"{', '.join(SCORES)}")
  if s.selection not in SELECTIONS:
    raise ValueError(f"config.sparsity.selection={s.selection!r} is not valid; choose one of: "
                     f"{', '.join(SELECTIONS)}")
  if (s.score == "fpgm") != (s.selection == "channels"):
    raise ValueError("config.sparsity.score='fpgm' goes with config.sparsity.selection="
                     "'channels' (structured filter pruning), and only with it")
  targets = list(s.targets)
  if not targets or any(not 0 < t < 1 for t in targets) or targets != sorted(targets):
    raise ValueError(f"config.sparsity.targets={tuple(targets)} must be increasing fractions "
                     "in (0, 1), e.g. (0.5, 0.75, 0.9)")
  if s.retrain_epochs <= 0:
    raise ValueError(f"config.sparsity.retrain_epochs={s.retrain_epochs} must be > 0")


def _scores(config, exp, state, round_index):
  s = config.sparsity
  masks = state.masks
  if s.score == "magnitude":
    scores = sp.magnitude(state.params, masks)
  elif s.score == "random":
    scores = sp.random(jax.random.fold_in(state.rng, 1_000_000 + round_index), masks)
  elif s.score == "snip":
    start = int(state.step)
    batches = [exp.data.train.batch(start + i) for i in range(s.snip_batches)]
    scores = sp.snip(sp.ce_grad_fn(exp.model, state.batch_stats), state.params, batches, masks)
  else:
    return sp.fpgm(state.params, masks)
  # Pruned weights stay pruned: they never win a place back.
  return sp.map_masked(lambda m, x: jnp.where(m, x, -jnp.inf), masks, scores)


def _select(config, state, scores, target):
  s = config.sparsity
  keep = 1.0 - target
  if s.selection == "global":
    return sp.global_topk(scores, keep)
  if s.selection == "per_layer":
    return sp.per_layer_topk(scores, keep)
  if s.selection == "std":
    return sp.std_threshold(state.params, state.masks, s.quality)
  return sp.intersect(sp.channels(scores, state.masks, keep), state.masks)


def run(config, workdir: str) -> dict:
  validate(config)
  exp = setup(config, workdir, with_masks=True)
  spe = exp.steps_per_epoch
  targets = list(config.sparsity.targets)
  round_steps = int(math.ceil(config.sparsity.retrain_epochs * spe))
  bounds = [exp.num_steps + r * round_steps for r in range(len(targets) + 1)]
  retrain_cfg = config.schedule.copy_and_resolve_references()
  retrain_cfg.lr, retrain_cfg.warmup_epochs = config.sparsity.retrain_lr, 0.0
  retrain_tx = make_optimizer(config.optimizer, make_schedule(retrain_cfg, spe, round_steps),
                              exp.state.params)
  step_kw = dict(label_smoothing=config.label_smoothing)
  dense_step = steps_lib.jit_train_step(
      steps_lib.train_step_fn(exp.model, exp.tx, schedule=exp.schedule, **step_kw), exp.mesh)
  retrain_step = steps_lib.jit_train_step(
      steps_lib.train_step_fn(exp.model, retrain_tx, **step_kw), exp.mesh)
  eval_step = steps_lib.jit_eval_step(steps_lib.eval_step_fn(exp.model), exp.mesh)

  def evaluate(step, state):
    metrics = steps_lib.evaluate(eval_step, state, exp.data.eval.batches(), exp.mesh)
    exp.writer.write(step, metrics, prefix="eval/")

  def record(step, state):
    total = sp.summary(sp.layer_stats(jax.device_get(state.params), jax.device_get(state.masks)))
    exp.writer.write(step, {"sparsity": 1 - total["density"], "nonzero": total["nonzero"],
                            "total": total["total"], "compression": total["compression"]},
                     prefix="prune/")
    logging.info("step %d: %s", step, total)

  # At the end of each phase: evaluate, record the sparsity, then checkpoint.
  hooks = [Hook(exp.every(config.eval_every_steps), evaluate), Hook(0, record),
           Hook(exp.every(config.checkpoint_every_steps), exp.save)]
  state = exp.state
  progress = exp.progress("prune", total=bounds[-1])
  try:
    phases = [(None, dense_step)] + [(t, retrain_step) for t in targets]
    for r, (target, step_fn) in enumerate(phases):
      end = bounds[r]
      start = bounds[r - 1] if r else 0
      if int(state.step) >= end:
        continue
      if target is not None and int(state.step) == start:   # the round begins: prune
        masks = _select(config, state, _scores(config, exp, state, r), target)
        params = sp.apply(state.params, masks)
        state = state.replace(params=params, masks=masks, opt_state=retrain_tx.init(params))
      state = fit(state, train_step=step_fn, batches=exp.data.train.batches(int(state.step)),
                  mesh=exp.mesh, num_steps=end, writer=exp.writer,
                  log_every=config.log_every_steps, progress=progress,
                  hooks=hooks)
  finally:
    progress.close()
    exp.checkpointer.wait()
    exp.writer.close()
  return _report(config, exp, workdir, bounds)


def _report(config, exp, workdir, bounds) -> dict:
  if jax.process_index() != 0:
    return {}
  by_step = {}
  for r in read_metrics(workdir):
    by_step.setdefault(r["step"], {}).update(r)
  rows = []
  for i, step in enumerate(bounds):
    rec = by_step.get(step, {})
    rows.append({"round": i, "target": 0.0 if i == 0 else config.sparsity.targets[i - 1],
                 "sparsity": rec.get("prune/sparsity"), "nonzero": int(rec.get("prune/nonzero", 0)),
                 "compression": rec.get("prune/compression"), "top1": rec.get("eval/top1"),
                 "top5": rec.get("eval/top5"), "step": step})
  results = {"model": config.model.name, "score": config.sparsity.score,
             "selection": config.sparsity.selection, "rounds": rows,
             "dense_top1": rows[0]["top1"]}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"\n{config.model.name}: {config.sparsity.score} scores, {config.sparsity.selection} "
        f"selection, workdir {workdir}")
  print(format_table(rows, ["round", "target", "sparsity", "nonzero", "compression", "top1",
                            "top5"]))
  label = f"{config.model.name} {config.sparsity.score}/{config.sparsity.selection}"
  print("plot:", plot_accuracy_vs_sparsity({label: rows},
                                           os.path.join(workdir, "accuracy_vs_sparsity.png")))
  return results
