"""Plain supervised training: the loop every other method builds on.

    state <- init(seed) or the latest checkpoint in workdir
    for step in steps: state <- train_step(state, batch[step])
        every epoch (or N steps): evaluate; checkpoint
    final evaluation, summary table, results.json

One phase (`train.phases`); `train(config, workdir, objective=...)` is
the entry point of methods that are one supervised run with their own loss
terms or model.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from neurojax.plots import plot_training_curves
from neurojax.train import phases, report
from neurojax.train.experiment import setup
from neurojax.train.writers import read_metrics


def run(config, workdir: str) -> dict:
  return train(config, workdir)[0]


def train(config, workdir: str, *, objective=None, method: str = "supervised",
          **setup_options):
  """Trains (or resumes) to the end and reports; returns (results, final
  state). `objective` is `steps.Objective` (default cross-entropy);
  `setup_options` go to `setup` (data, model_spec, initial, resume_safe)."""
  exp = setup(config, workdir, **setup_options)
  start = time.perf_counter()
  state = phases.run(exp, [phases.Phase("train", exp.num_steps)], objective=objective)
  compiles = exp.train_step_compiles()
  if compiles > 1:
    logging.warning("the train step was compiled %d times; something changes shape or dtype "
                    "between steps", compiles)
  return _report(config, exp, workdir, method, time.perf_counter() - start, compiles), state


def _report(config, exp, workdir, method, seconds, compiles) -> dict:
  if not exp.writer.active:
    return {}
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
      "resumed_from": exp.resumed_from, "train_seconds_this_run": seconds,
      "train_step_compiles": compiles,
      "images_per_sec": float(np.median(speeds)) if speeds else None,   # training, median
      "final": history[-1], "best": max(history, key=lambda e: e["top1"]), "evals": history,
  }
  best = results["best"]
  ema = ["ema_loss", "ema_top1", "ema_top5"] if "ema_top1" in history[-1] else []
  return report.write(
      workdir, method, results,
      title=(f"{config.model.name} on {results['dataset']}: {exp.num_steps} steps "
             f"({results['epochs']:.1f} epochs) of batch {config.batch_size}; this run trained "
             f"{exp.num_steps - (exp.resumed_from or 0)} of them in {seconds:.0f} s; workdir "
             f"{workdir}"),
      rows=history, columns=["step", "epoch", "loss", "top1", "top5", *ema],
      lines=[f"final test top-1 {100 * history[-1]['top1']:.2f}%; the best epoch's, picked on "
             f"the test set: {100 * best['top1']:.2f}% at epoch {best['epoch']:g}",
             f"metrics: {exp.writer.path}; TensorBoard: tensorboard --logdir "
             f"{os.path.join(workdir, 'tb')}"],
      plot=lambda: plot_training_curves(workdir))
