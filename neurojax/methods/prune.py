"""Pruning with retraining: Han et al.'s iterative magnitude pruning, one-shot
pruning, SNIP and random scores, and FPGM structured filter pruning.

    train the dense network for num_epochs
    for target in prune.targets:                    # fraction of weights pruned
        scores <- score(params)                     # pruned weights score -inf
        masks  <- select(scores, keep 1 - target)
        params <- params * masks; a fresh optimizer, lr schedule prune.retrain.schedule
        retrain for prune.retrain.epochs with the masks held fixed
        record sparsity, nonzero weights, compression and test accuracy

`config.sparsity` says which weights are masked and how they are scored
and selected; `config.prune` is the schedule. One entry in `targets` is
one-shot pruning. Masks live in the train state, so every phase checkpoints
and resumes exactly; the optimizer is wrapped in `sparsity.masked`, so
pruned weights and their moments stay exactly 0.

FPGM (`score="fpgm"`, `selection="channels"`) prunes whole channels of the
model's declared channel groups (for the CIFAR ResNets: the inner channels
of every block); a target is then the fraction of each group's channels
pruned. At the end the pruned channels are cut out and the smaller dense
model is written to `<workdir>/slim` (see `sparsity.load_exported`), after
checking that it gives the masked model's logits.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from neurojax import models, parallel, rng
from neurojax import sparsity as sp
from neurojax.plots import plot_accuracy_vs_sparsity
from neurojax.train import phases, report
from neurojax.train import steps as steps_lib
from neurojax.train.experiment import setup
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.writers import metrics_by_step

SCORES = ("magnitude", "snip", "random", "fpgm")
SELECTIONS = ("global", "per_layer", "std", "channels")


def config() -> ml_collections.ConfigDict:
  """`config.prune`: the pruning schedule of method="prune" (which weights,
  and how they are scored and selected, is `config.sparsity`)."""
  from neurojax.config import schedule_config  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      targets=(0.5, 0.75, 0.9),     # fraction pruned after each round (one entry: one-shot)
      retrain=dict(                 # each round, with a fresh optimizer and this schedule
          epochs=4.0,
          schedule=schedule_config(lr=0.01))))


def validate(config) -> None:
  from neurojax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate_sparsity(config)
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
  targets = list(config.prune.targets)
  if not targets or any(not 0 < t < 1 for t in targets) or targets != sorted(targets):
    raise ValueError(f"config.prune.targets={tuple(targets)} must be increasing fractions "
                     "in (0, 1), e.g. (0.5, 0.75, 0.9)")
  config_lib.check_number(config, "prune.retrain.epochs", 0, low_open=True,
                          hint=" (each round's retraining)")
  config_lib.validate_schedule(config, "prune.retrain.schedule")
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
    scores = sp.random(jax.random.fold_in(state.rng, rng.PRUNE_RANDOM + round_index), masks)
  else:
    start = int(state.step)
    # Global (sharded) batches: every process scores on the same data.
    batches = [parallel.shard_batch(exp.data.train.batch(start + i), exp.mesh)
               for i in range(sp.snip_batch_count(s.snip_batches, exp.steps_per_epoch))]
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
  targets = list(config.prune.targets)
  round_steps = int(math.ceil(config.prune.retrain.epochs * spe))
  retrain_schedule = make_schedule(config.prune.retrain.schedule, spe, round_steps)
  retrain = (make_optimizer(config.optimizer, retrain_schedule, exp.state.params),
             retrain_schedule)

  def record(step, state):
    total = sp.summary(_layer_stats(config, exp, state))
    exp.writer.write(step, {"sparsity": 1 - total["density"], "nonzero": total["nonzero"],
                            "total": total["total"], "compression": total["compression"],
                            "macs": total["sparse_macs"], "dense_macs": total["macs"]},
                     prefix="prune/")
    logging.info("step %d: %s", step, total)

  def prune_to(r, target):
    def enter(exp, state):       # the round begins: prune; the optimizer starts afresh
      masks = _prune(config, exp, state, r, target)
      return state.replace(params=sp.apply(state.params, masks), masks=masks)
    return enter

  # At the end of each phase: evaluate, record the sparsity, then checkpoint.
  plan = [phases.Phase("dense", exp.num_steps, at_end=[record])] + [
      phases.Phase(f"round {r}", round_steps, enter=prune_to(r, t), optimizer=lambda e: retrain,
                   fresh_optimizer=True, at_end=[record])
      for r, t in enumerate(targets, start=1)]
  state = phases.run(exp, plan, desc="prune")
  slim = None
  if config.sparsity.selection == "channels":
    slim = _export_slim(config, exp, state, workdir)
  return _report(config, exp, workdir, phases.bounds(plan)[1:], slim)


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
  if parallel.is_main_process():
    sp.export(info["directory"], spec, variables)
  return info


def _report(config, exp, workdir, ends, slim=None) -> dict:
  if not exp.writer.active:
    return {}
  by_step = metrics_by_step(workdir)
  rows = []
  for i, step in enumerate(ends):
    rec = by_step.get(step, {})
    rows.append({"round": i, "target": 0.0 if i == 0 else config.prune.targets[i - 1],
                 "sparsity": rec.get("prune/sparsity"), "nonzero": int(rec.get("prune/nonzero", 0)),
                 "compression": rec.get("prune/compression"),
                 "macs_kept": (rec["prune/macs"] / rec["prune/dense_macs"]
                               if "prune/macs" in rec else None),
                 "top1": rec.get("eval/top1"),
                 "top5": rec.get("eval/top5"), "step": step})
  results = {"model": config.model.name, "score": config.sparsity.score,
             "selection": config.sparsity.selection, "rounds": rows,
             "dense_top1": rows[0]["top1"],
             "dense_macs": by_step.get(ends[0], {}).get("prune/dense_macs")}
  lines = []
  if slim:
    results["slim"] = slim
    lines.append(f"slimmed model: {slim['params']:,} params (dense {slim['dense_params']:,}), "
                 f"{slim['macs']:,} MACs per example, inner widths {slim['widths']}; same logits "
                 f"as the masked model (max abs diff {slim['logits_max_abs_diff']:.1e}); "
                 f"written to {slim['directory']}")
  label = f"{config.model.name} {config.sparsity.score}/{config.sparsity.selection}"
  return report.write(
      workdir, "prune", results,
      title=(f"{config.model.name}: {config.sparsity.score} scores, "
             f"{config.sparsity.selection} selection, workdir {workdir}"),
      rows=rows, columns=["round", "target", "sparsity", "nonzero", "compression", "macs_kept",
                          "top1", "top5"], lines=lines,
      plot=lambda: plot_accuracy_vs_sparsity({label: rows},
                                             os.path.join(workdir, "accuracy_vs_sparsity.png")))
