"""DNR, KE, LLF, layer-wise reinit and the two baselines on small-data
Fashion-MNIST, several seeds each, with equal total epochs (the short
baseline excepted: it is one generation).

Every method is `configs/dnr_fmnist.py` with another mask policy:
    dnr        SNIP keep-mask, 80% kept, recomputed each generation
    ke         the fixed kels split at 0.5
    llf        layer4 and the fc re-drawn each generation
    layerwise  generation g re-draws from stage (4g)//G + 1 on
    long       one generation of G x E epochs
    short      one generation of E epochs
Runs go to <out>/<method>_s<seed>; finished ones (results.json) are skipped,
so an interrupted sweep continues where it stopped. At the end it prints the
mean ± sample std table and writes the plot.

    .venv/bin/python benchmarks/generations_fmnist.py --seeds 0 1 2 --out runs/gen \
        --plot docs/generations_fmnist.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

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
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(methods()))
  parser.add_argument("--out", default="runs/gen")
  parser.add_argument("--plot", default="docs/generations_fmnist.png")
  args = parser.parse_args()
  table = methods()
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
                      "--config.progress=False", *table[name]], check=True, cwd=ROOT)
      print(f"{name} seed {seed}: {time.time() - began:.0f} s", flush=True)
  rows = plots.generation_summary(workdirs)
  print(format_table(rows, ["method", "runs", "epochs", "top1", "top1_std"]))
  print("plot:", plots.plot_generation_summary(rows, args.plot))


if __name__ == "__main__":
  main()
