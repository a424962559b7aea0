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

from neurojax.plots import plot_reliability, plot_training_curves
from neurojax.train import phases, report
from neurojax.train.experiment import setup
from neurojax.train.writers import read_metrics


def run(config, workdir: str) -> dict:
  return train(config, workdir)[0]


def train(config, workdir: str, *, objective=None, method: str = "supervised", predict=None,
          samples: int = 1, extra: dict | None = None, **setup_options):
  """Trains (or resumes) to the end and reports; returns (results, final
  state). `objective` is `steps.Objective` (default cross-entropy);
  `predict` and `samples` the eval's (`steps.eval_step_fn`); `extra` joins
  results.json; `setup_options` go to `setup` (data, model_spec, initial,
  resume_safe)."""
  exp = setup(config, workdir, **setup_options)
  start = time.perf_counter()
  evaluate = exp.evaluator(objective, predict=predict, samples=samples)
  state = phases.run(exp, [phases.Phase("train", exp.num_steps)], objective=objective,
                     evaluate=evaluate)
  compiles = exp.train_step_compiles()
  if compiles > 1:
    logging.warning("the train step was compiled %d times; something changes shape or dtype "
                    "between steps", compiles)
  return _report(config, exp, workdir, method, time.perf_counter() - start, compiles,
                 evaluate.last, extra or {}), state


def reliability_bins(sums) -> dict | None:
  """The confidence bins of an eval's sums (`losses.calibration_sums`), as
  lists: count, confidence and correct sums per bin."""
  if not sums or "bin_count" not in sums:
    return None
  return {k[len("bin_"):]: np.asarray(v, float).tolist() for k, v in sums.items()
          if k.startswith("bin_")}


def _report(config, exp, workdir, method, seconds, compiles, last_eval=None,
            extra: dict | None = None) -> dict:
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
  results.update(extra or {})
  bins = reliability_bins((last_eval or {}).get(""))
  if bins is not None:            # the final eval's, for a reliability diagram
    results["reliability"] = bins
  best = results["best"]
  ema = ["ema_loss", "ema_top1", "ema_top5"] if "ema_top1" in history[-1] else []
  return report.write(
      workdir, method, results,
      title=(f"{config.model.name} on {results['dataset']}: {exp.num_steps} steps "
             f"({results['epochs']:.1f} epochs) of batch {config.batch_size}; this run trained "
             f"{exp.num_steps - (exp.resumed_from or 0)} of them in {seconds:.0f} s; workdir "
             f"{workdir}"),
      rows=history, columns=["step", "epoch", "loss", "top1", "top5", "ece", "brier", *ema],
      lines=[f"final test top-1 {100 * history[-1]['top1']:.2f}%; the best epoch's, picked on "
             f"the test set: {100 * best['top1']:.2f}% at epoch {best['epoch']:g}",
             _calibration_line(history[-1]),
             f"metrics: {exp.writer.path}; TensorBoard: tensorboard --logdir "
             f"{os.path.join(workdir, 'tb')}"],
      plot=lambda: _plots(workdir, config.model.name if method == "supervised"
                          else f"{config.model.name}, {method}", bins))


def _calibration_line(final: dict) -> str:
  mi = f", mutual information {final['mi']:.4f}" if "mi" in final else ""
  return (f"final test NLL {final['loss']:.4f}, ECE {final.get('ece', float('nan')):.4f} "
          f"(15 bins), Brier {final.get('brier', float('nan')):.4f}, predictive entropy "
          f"{final.get('entropy', float('nan')):.4f}{mi}")


def _plots(workdir: str, label: str, bins) -> str:
  curves = plot_training_curves(workdir)
  if bins is None:
    return curves
  return curves + ", " + plot_reliability({label: bins}, os.path.join(workdir, "reliability.png"))
