"""DNR, KE, LLF, layer-wise reinit and the two baselines on small-data
Fashion-MNIST, several seeds each, with equal total epochs (the short
baseline excepted: it is one generation).

Every method is `configs/dnr_fmnist.py` (the original's init and re-draw)
with another mask policy:
    dnr             SNIP keep-mask, 80% kept, recomputed each generation
    ke              the fixed kels split at 0.5
    llf             layer4 and the fc weight re-drawn each generation
    layerwise       generation g re-draws from stage (4g)//G + 1 on
    long            one generation of G x E epochs
    short           one generation of E epochs
    dnr_model_init  dnr, re-drawn from the model's own init (neurojax's
                    re-draw before it followed the original)
    long_torch_fc   long, with nn.Linear's default fc init (neurojax's
                    model before it followed the original)
Runs go to <out>/<method>_s<seed>; finished ones (results.json) are skipped,
so an interrupted sweep continues where it stopped. `--per-class 20` trains
on 20 images per class instead of 50 (give it its own --out). At the end it prints the
mean ± sample std table, the per-seed results, the paired differences of
each method from the long baseline (same seed), writes them as JSON and
writes the plot.

    .venv/bin/python benchmarks/generations_fmnist.py --seeds 0 1 2 3 4 --out runs/gen \
        --plot docs/generations_fmnist.png --json benchmarks/out/generations_fmnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurojax import plots  # noqa: E402
from neurojax.config import load_config_file  # noqa: E402
from neurojax.tables import format_table  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "dnr_fmnist.py")


def methods() -> dict[str, list[str]]:
  c = load_config_file(CONFIG)
  gens, epochs = c.generations.num_generations, c.num_epochs
  one = ["--config.generations.policy=none", "--config.generations.num_generations=1"]
  return {
      "dnr": [],
      "ke": ["--config.generations.policy=ke"],
      "llf": ["--config.generations.policy=llf"],
      "layerwise": ["--config.generations.policy=layerwise"],
      "long": one + [f"--config.num_epochs={gens * epochs}"],
      "short": one,
      "dnr_model_init": ["--config.generations.redraw=model_init"],
      "long_torch_fc": one + [f"--config.num_epochs={gens * epochs}",
                              "--config.model.fc_init=torch_default"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(methods()))
  parser.add_argument("--out", default="runs/gen")
  parser.add_argument("--plot", default="docs/generations_fmnist.png")
  parser.add_argument("--json", default="benchmarks/out/generations_fmnist.json")
  parser.add_argument("--per-class", type=int, default=0,
                      help="training images per class (0: the config's 50)")
  args = parser.parse_args()
  table = methods()
  data = [f"--config.data.per_class={args.per_class}"] if args.per_class else []
  workdirs = []
  for seed in args.seeds:
    for name in args.methods:
      workdir = os.path.join(args.out, f"{name}_s{seed}")
      workdirs.append(workdir)
      if os.path.exists(os.path.join(workdir, "results.json")):
        continue
      began = time.time()
      subprocess.run([sys.executable, "-m", "neurojax.main", f"--config={CONFIG}",
                      f"--workdir={os.path.abspath(workdir)}", f"--config.seed={seed}",
                      "--config.progress=False", *table[name], *data], check=True, cwd=ROOT)
      print(f"{name} seed {seed}: {time.time() - began:.0f} s", flush=True)
  labels = {w: os.path.basename(w).rsplit("_s", 1)[0] for w in workdirs}
  rows = plots.generation_summary(workdirs, labels)
  print(format_table(rows, ["method", "runs", "epochs", "top1", "top1_std"]))
  summary = {"seeds": args.seeds, "cpu": cpu_model(), "methods": {}}
  by_name = {r["method"]: r for r in rows}
  long = by_name.get("long")
  for row in rows:
    entry = {"top1": row["top1"], "top1_std": row["top1_std"], "per_seed": row["per_run"],
             "epochs": row["epochs"]}
    if long and row is not long and len(row["per_run"]) == len(long["per_run"]):
      diff = np.subtract(row["per_run"], long["per_run"])       # same seeds, same order
      entry.update(minus_long=diff.tolist(), minus_long_mean=float(diff.mean()),
                   minus_long_std=float(diff.std(ddof=1)) if len(diff) > 1 else None)
    summary["methods"][row["method"]] = entry
    print(f"{row['method']:>15}: per seed " + ", ".join(f"{100 * v:.2f}" for v in row["per_run"])
          + (f"; minus long {100 * entry['minus_long_mean']:+.2f} ± "
             f"{100 * (entry['minus_long_std'] or 0):.2f}" if "minus_long" in entry else ""))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
    print("summary:", args.json)
  print("plot:", plots.plot_generation_summary(rows, args.plot))


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown"

if __name__ == "__main__":
  main()
