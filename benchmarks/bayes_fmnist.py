"""Deterministic LeNet-5, Bayes by Backprop and MOPED on Fashion-MNIST
(all 60,000 training images, all 10,000 test images), several seeds.

Per seed:
    det    configs/lenet5_fmnist.py (15 epochs, SGD, label smoothing 0.1)
    bbb    configs/bbb_lenet5_fmnist.py (15 epochs, Adam, mixture prior,
           KL / 60,000; the test prediction averages 10 posterior draws)
    moped  configs/moped_lenet5_fmnist.py from that seed's det run (5 epochs
           of Adam at 1e-4; prior N(w, (0.1 |w|)^2); 10 draws)
    det_ft the control: the same 5-epoch fine-tune of det without the Bayesian
           part (MOPED's run with the KL off, sigma = 1e-4 |w| and the mean
           weights predicting), which tells what the fine-tune alone (no
           label smoothing, Adam at 1e-4) does to accuracy and calibration
Runs go to <out>/<variant>_s<seed>; finished ones (results.json) are
skipped, so an interrupted sweep continues where it stopped (an interrupted
run resumes from its checkpoint). Each run evaluates once, at its end. It
prints the table (mean ± sample std of top-1, NLL, ECE, Brier, entropy,
mutual information), the per-seed values, and writes the reliability
diagrams (each variant's seeds pooled) and the JSON.

    .venv/bin/python benchmarks/bayes_fmnist.py --seeds 0 1 2 --out runs/bayes \
        --plot docs/bayes_fmnist.png --json benchmarks/out/bayes_fmnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurojax import plots  # noqa: E402
from neurojax.tables import format_table  # noqa: E402

QUIET = ["--config.progress=False", "--config.eval_every_steps=100000000"]
VARIANTS = {"det": ("lenet5_fmnist.py", []), "bbb": ("bbb_lenet5_fmnist.py", []),
            "moped": ("moped_lenet5_fmnist.py", []),
            "det_ft": ("moped_lenet5_fmnist.py", ["--config.bayes.kl_weight=0",
                                                 "--config.bayes.prior=gaussian",
                                                 "--config.bayes.delta=0.0001",
                                                 "--config.bayes.eval_samples=0"])}
METRICS = ("top1", "loss", "ece", "brier", "entropy", "mi")


def run(workdir: str, config: str, overrides: list[str]) -> dict:
  if not os.path.exists(os.path.join(workdir, "results.json")):
    print(f"training {workdir}", flush=True)
    subprocess.run([sys.executable, "-m", "neurojax.main",
                    f"--config={os.path.join(ROOT, 'configs', config)}",
                    f"--workdir={workdir}", *QUIET, *overrides], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--out", default="runs/bayes")
  parser.add_argument("--plot", default="docs/bayes_fmnist.png")
  parser.add_argument("--json", default="benchmarks/out/bayes_fmnist.json")
  args = parser.parse_args()
  results = {v: {} for v in VARIANTS}
  for seed in args.seeds:
    for variant, (config, overrides) in VARIANTS.items():
      workdir = os.path.join(args.out, f"{variant}_s{seed}")
      extra = [f"--config.seed={seed}", *overrides]
      if variant in ("moped", "det_ft"):
        extra.append(f"--config.bayes.init_from={os.path.join(args.out, f'det_s{seed}')}")
      results[variant][seed] = run(workdir, config, extra)
  rows, per_seed = [], []
  for variant, by_seed in results.items():
    finals = {m: [r["final"].get(m, 0.0) for r in by_seed.values()] for m in METRICS}
    row = {"run": variant}
    for m in METRICS:
      scale, digits = (100, 2) if m in ("top1", "ece") else (1, 4)
      values = scale * np.asarray(finals[m])
      row[m] = (f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
                if len(values) > 1 else f"{values.mean():.{digits}f}")
    rows.append(row)
    for seed, r in by_seed.items():
      per_seed.append({"run": variant, "seed": seed, **{m: r["final"].get(m, 0.0)
                                                        for m in METRICS}})
  print(f"Fashion-MNIST, LeNet-5, seeds {args.seeds}: top-1 and ECE in %, NLL, Brier, "
        f"entropy and mutual information in nats (the final test eval; mean ± sample std)")
  print(format_table(rows, ["run", *METRICS]))
  print(format_table(per_seed, ["run", "seed", *METRICS]))
  pooled = {}
  for variant, by_seed in results.items():
    bins = [r["reliability"] for r in by_seed.values()]
    pooled[f"{variant} ({len(bins)} seeds)"] = {k: np.sum([b[k] for b in bins], 0).tolist()
                                               for k in bins[0]}
  print("plot:", plots.plot_reliability(pooled, args.plot))
  os.makedirs(os.path.dirname(args.json), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump({"rows": rows, "per_seed": per_seed, "reliability": pooled}, f, indent=1)


if __name__ == "__main__":
  main()
