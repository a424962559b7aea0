"""Plain supervised training: the loop every other method builds on.

    state <- init(seed) or the latest checkpoint in workdir
    for step in steps: state <- train_step(state, batch[step])
        every epoch (or N steps): evaluate; checkpoint
    final evaluation, summary table, results.json
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging

from neurojax.plots import plot_training_curves
from neurojax.train.experiment import setup
from neurojax.train.loop import Hook, fit
from neurojax.train.writers import format_table, read_metrics


def run(config, workdir: str) -> dict:
  return train(config, workdir)[0]


def train(config, workdir: str, **setup_options):
  """Trains (or resumes) to the end and reports; returns (results, final
  state). `setup_options` go to `setup` (data, model, initial)."""
  exp = setup(config, workdir, **setup_options)
  train_step = exp.train_step()
  evaluate = exp.evaluator()

  start = time.perf_counter()
  progress = exp.progress()
  try:
    state = fit(exp.state, train_step=train_step,
                batches=exp.data.train.batches(exp.start_step), mesh=exp.mesh,
                num_steps=exp.num_steps, writer=exp.writer, log_every=config.log_every_steps,
                progress=progress,
                hooks=[Hook(exp.every(config.eval_every_steps), evaluate),
                       Hook(exp.every(config.checkpoint_every_steps), exp.save)])
    # A run resumed at its last step was evaluated before it was saved.
    if exp.num_steps not in evaluate.steps and exp.resumed_from != exp.num_steps:
      evaluate(exp.num_steps, state)
  finally:
    exp.close(progress)
  compiles = train_step._cache_size()  # pylint: disable=protected-access
  if compiles > 1:
    logging.warning("the train step was compiled %d times; something changes shape or dtype "
                    "between steps", compiles)
  if jax.process_index() != 0:
    return {}, state
  records = read_metrics(workdir)
  history = [{"step": r["step"], "epoch": r["step"] / exp.steps_per_epoch,
              **{k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}}
             for r in records if "eval/top1" in r]
  speeds = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r]
  results = {
      "model": config.model.name,
      "dataset": ("synthetic" if config.data.source == "synthetic"
                  else f"{config.data.source}:{config.data.name}"),
      "steps": exp.num_steps, "epochs": exp.num_steps / exp.steps_per_epoch,
      "resumed_from": exp.resumed_from, "train_seconds_this_run": time.perf_counter() - start,
      "train_step_compiles": compiles,
      "images_per_sec": float(np.median(speeds)) if speeds else None,   # training, median
      "final": history[-1], "best": max(history, key=lambda e: e["top1"]), "evals": history,
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"\n{config.model.name} on {results['dataset']}: {exp.num_steps} steps "
        f"({results['epochs']:.1f} epochs) of batch {config.batch_size}; this run trained "
        f"{exp.num_steps - (exp.resumed_from or 0)} of them in "
        f"{results['train_seconds_this_run']:.0f} s; workdir {workdir}")
  ema = ["ema_loss", "ema_top1", "ema_top5"] if "ema_top1" in history[-1] else []
  print(format_table(history, ["step", "epoch", "loss", "top1", "top5", *ema]))
  best = results["best"]
  print(f"final test top-1 {100 * history[-1]['top1']:.2f}%; the best epoch's, picked on the "
        f"test set: {100 * best['top1']:.2f}% at epoch {best['epoch']:g}")
  print(f"curves: {plot_training_curves(workdir)}; metrics: {exp.writer.path}; "
        f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tb')}")
  return results, state
