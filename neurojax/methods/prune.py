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

FPGM (`score="fpgm"`, `selection="channels"`) prunes whole channels of the
model's declared channel groups (for the CIFAR ResNets: the inner channels
of every block); a target is then the fraction of each group's channels
pruned. At the end the pruned channels are cut out and the smaller dense
model is written to `<workdir>/slim` (see `sparsity.load_exported`), after
checking that it gives the masked model's logits.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from neurojax import models, parallel
from neurojax import sparsity as sp
from neurojax.plots import plot_accuracy_vs_sparsity
from neurojax.train import steps as steps_lib
from neurojax.train.experiment import setup
from neurojax.train.loop import Hook, fit
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.writers import format_table, metrics_by_step

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
  if s.selection == "channels":
    _groups(config, models.get_model(config.model.name, num_classes=10,
                                     **{k: v for k, v in config.model.items() if k != "name"}))


def _groups(config, model):
  return models.channel_groups(config.model.name, model)


def _scores(config, exp, state, round_index):
  s = config.sparsity
  masks = state.masks
  if s.score == "magnitude":
    scores = sp.magnitude(state.params, masks)
  elif s.score == "random":
    scores = sp.random(jax.random.fold_in(state.rng, 1_000_000 + round_index), masks)
  else:
    start = int(state.step)
    # Global (sharded) batches: every process scores on the same data.
    batches = [parallel.shard_batch(exp.data.train.batch(start + i), exp.mesh)
               for i in range(s.snip_batches)]
    scores = sp.snip(sp.ce_grad_fn(exp.model, state.batch_stats), state.params, batches, masks)
  # Pruned weights stay pruned: they never win a place back.
  return sp.map_masked(lambda m, x: jnp.where(m, x, -jnp.inf), masks, scores)


def _prune(config, exp, state, round_index, target):
  """The masks for the round that prunes to `target`."""
  s = config.sparsity
  keep = 1.0 - target
  if s.selection == "channels":
    return sp.fpgm_channels(state.params, state.masks, _groups(config, exp.model), keep)
  if s.selection == "std":
    return sp.std_threshold(state.params, state.masks, s.quality)
  scores = _scores(config, exp, state, round_index)
  if s.selection == "global":
    return sp.global_topk(scores, keep)
  return sp.per_layer_topk(scores, keep)


def run(config, workdir: str) -> dict:
  validate(config)
  exp = setup(config, workdir, with_masks=True)
  spe = exp.steps_per_epoch
  targets = list(config.sparsity.targets)
  round_steps = int(math.ceil(config.sparsity.retrain_epochs * spe))
  bounds = [exp.num_steps + r * round_steps for r in range(len(targets) + 1)]
  retrain_cfg = config.schedule.copy_and_resolve_references()
  retrain_cfg.lr, retrain_cfg.warmup_epochs = config.sparsity.retrain_lr, 0.0
  retrain_schedule = make_schedule(retrain_cfg, spe, round_steps)
  retrain_tx = make_optimizer(config.optimizer, retrain_schedule, exp.state.params)
  dense_step = exp.train_step()
  retrain_step = exp.train_step(
      retrain_tx, lambda s: retrain_schedule((s - exp.num_steps) % round_steps))
  evaluate = exp.evaluator()

  def record(step, state):
    total = sp.summary(_layer_stats(config, exp, state))
    exp.writer.write(step, {"sparsity": 1 - total["density"], "nonzero": total["nonzero"],
                            "total": total["total"], "compression": total["compression"],
                            "macs": total["sparse_macs"], "dense_macs": total["macs"]},
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
        masks = _prune(config, exp, state, r, target)
        params = sp.apply(state.params, masks)
        state = state.replace(params=params, masks=masks, opt_state=retrain_tx.init(params))
      state = fit(state, train_step=step_fn, batches=exp.data.train.batches(int(state.step)),
                  mesh=exp.mesh, num_steps=end, writer=exp.writer,
                  log_every=config.log_every_steps, progress=progress,
                  hooks=hooks)
  finally:
    exp.close(progress)
  slim = None
  if config.sparsity.selection == "channels":
    slim = _export_slim(config, exp, state, workdir)
  return _report(config, exp, workdir, bounds, slim)


def _layer_stats(config, exp, state):
  """Per-kernel rows with MACs. Structured pruning counts every kernel (the
  whole network's size and MACs); otherwise the masked leaves."""
  params, batch_stats, masks = parallel.to_host((state.params, state.batch_stats, state.masks))
  rows_of = sp.dense_masks(params) if config.sparsity.selection == "channels" else masks
  return sp.layer_stats(params, rows_of, exp.model,
                        steps_lib.model_variables(params, batch_stats), exp.data.info.image_shape)


def _export_slim(config, exp, state, workdir) -> dict:
  """Cuts out the pruned channels, writes the slim model to <workdir>/slim,
  and checks that it gives the masked model's logits on an eval batch."""
  groups = _groups(config, exp.model)
  params, batch_stats, masks = parallel.to_host((state.params, state.batch_stats, state.masks))
  masked_variables = steps_lib.model_variables(params, batch_stats)
  variables, widths = sp.slim(masked_variables, masks, groups)
  options = {k: v for k, v in config.model.items() if k != "name"}
  options[models.width_option(config.model.name)] = tuple(widths)
  spec = {"name": config.model.name, "num_classes": exp.data.info.num_classes, "options": options,
          "image_shape": list(exp.data.info.image_shape)}
  slim_model = models.get_model(spec["name"], num_classes=spec["num_classes"], **options)
  images = next(iter(exp.data.eval.batches()))["image"]
  ref = exp.model.apply(masked_variables, images, train=False)
  out = slim_model.apply(variables, images, train=False)
  max_diff = float(jnp.max(jnp.abs(ref - out)))
  if max_diff > 1e-3 * (1.0 + float(jnp.max(jnp.abs(ref)))):
    raise RuntimeError(f"the slimmed model's logits differ from the masked model's by {max_diff}")
  n_params = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
  stats = sp.summary(sp.layer_stats(variables["params"], sp.dense_masks(variables["params"]),
                                    slim_model, variables, exp.data.info.image_shape))
  info = {"directory": os.path.join(workdir, "slim"), "widths": list(widths), "params": n_params,
          "dense_params": sum(int(x.size) for x in jax.tree.leaves(params)),
          "macs": stats["macs"], "logits_max_abs_diff": max_diff}
  if jax.process_index() == 0:
    sp.export(info["directory"], spec, variables)
  return info


def _report(config, exp, workdir, bounds, slim=None) -> dict:
  if jax.process_index() != 0:
    return {}
  by_step = metrics_by_step(workdir)
  rows = []
  for i, step in enumerate(bounds):
    rec = by_step.get(step, {})
    rows.append({"round": i, "target": 0.0 if i == 0 else config.sparsity.targets[i - 1],
                 "sparsity": rec.get("prune/sparsity"), "nonzero": int(rec.get("prune/nonzero", 0)),
                 "compression": rec.get("prune/compression"),
                 "macs_kept": (rec["prune/macs"] / rec["prune/dense_macs"]
                               if "prune/macs" in rec else None),
                 "top1": rec.get("eval/top1"),
                 "top5": rec.get("eval/top5"), "step": step})
  results = {"model": config.model.name, "score": config.sparsity.score,
             "selection": config.sparsity.selection, "rounds": rows,
             "dense_top1": rows[0]["top1"],
             "dense_macs": by_step.get(bounds[0], {}).get("prune/dense_macs")}
  if slim:
    results["slim"] = slim
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"\n{config.model.name}: {config.sparsity.score} scores, {config.sparsity.selection} "
        f"selection, workdir {workdir}")
  print(format_table(rows, ["round", "target", "sparsity", "nonzero", "compression",
                            "macs_kept", "top1", "top5"]))
  if slim:
    print(f"slimmed model: {slim['params']:,} params (dense {slim['dense_params']:,}), "
          f"{slim['macs']:,} MACs per example, inner widths {slim['widths']}; same logits as "
          f"the masked model (max abs diff {slim['logits_max_abs_diff']:.1e}); "
          f"written to {slim['directory']}")
  label = f"{config.model.name} {config.sparsity.score}/{config.sparsity.selection}"
  print("plot:", plot_accuracy_vs_sparsity({label: rows},
                                           os.path.join(workdir, "accuracy_vs_sparsity.png")))
  return results
