"""Neural Rejuvenation against two plain baselines on Fashion-MNIST, several
seeds (`configs/nr_fmnist.py`: NR's CIFAR VGG-19 at 1/16 width, 5,000
training images).

Per seed:
    nr      the NR run: sparsify until utilisation <= 0.25, surgery, 20 epochs
    same    the same architecture (the config's widths), trained plainly for
            the NR run's total epochs (sparsify + 20), lr x0.1 at 1/2 and 3/4
    equal   a plain VGG whose widths are the config's scaled by one factor so
            that its parameter count matches the rejuvenated model's (within
            1%), for the same total epochs
Runs go to <out>/<variant>_s<seed>; finished ones (results.json) are
skipped, so an interrupted sweep continues where it stopped. At the end it
prints the table (mean ± sample std), the per-seed results, the paired
differences NR minus each baseline, the utilisation at each sparsify epoch
and the widths before / alive / after, and writes the plot and the JSON.

    .venv/bin/python benchmarks/nr_fmnist.py --seeds 0 1 2 --out runs/nr \
        --plot docs/nr_fmnist.png --json benchmarks/out/nr_fmnist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurojax import models, plots  # noqa: E402
from neurojax.config import load_config_file  # noqa: E402
from neurojax.tables import format_table  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "nr_fmnist.py")
QUIET = ["--config.progress=False", "--config.eval_every_steps=1000000"]


def param_count(name: str, widths) -> int:
  model = models.get_model(name, num_classes=10, widths=tuple(widths))
  shapes = jax.eval_shape(lambda k: model.init({"params": k}, np.zeros((1, 28, 28, 1)),
                                               train=False), jax.random.PRNGKey(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def equal_widths(name: str, widths, target: int):
  """The config's widths times one factor (rounded; the factor on a 0.005
  grid whose parameter count is nearest `target`), then single layers
  from the last one back widened or narrowed by 1 while that brings the
  count nearer."""
  best = None
  for factor in np.arange(0.3, 1.5, 0.005):
    scaled = [max(1, int(round(w * factor))) for w in widths]
    n = param_count(name, scaled)
    if best is None or abs(n - target) < abs(best[1] - target):
      best = (scaled, n)
  scaled, n = best
  for i in reversed(range(len(scaled))):
    for step in (1, -1):
      trial = list(scaled)
      trial[i] = max(1, trial[i] + step)
      m = param_count(name, trial)
      if abs(m - target) < abs(n - target):
        scaled, n = trial, m
  return scaled, n


def run(workdir: str, overrides: list[str]) -> dict:
  if not os.path.exists(os.path.join(workdir, "results.json")):
    subprocess.run([sys.executable, "-m", "neurojax.main", f"--config={CONFIG}",
                    f"--workdir={workdir}", *QUIET, *overrides], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--out", default="runs/nr")
  parser.add_argument("--plot", default="docs/nr_fmnist.png")
  parser.add_argument("--json", default="benchmarks/out/nr_fmnist.json")
  args = parser.parse_args()
  c = load_config_file(CONFIG)
  name, widths = c.model.name, list(c.model.widths)
  per_seed = []
  nr_runs = []
  for seed in args.seeds:
    nr = run(os.path.join(args.out, f"nr_s{seed}"), [f"--config.seed={seed}"])
    nr_runs.append(nr)
    epochs = int(round(nr["epochs"]))
    plain = ["--config.method=supervised", f"--config.seed={seed}",
             f"--config.num_epochs={epochs}",
             f"--config.schedule.milestones=({epochs // 2},{3 * epochs // 4})"]
    target = nr["params"]
    scaled, n_equal = equal_widths(name, widths, target)
    same = run(os.path.join(args.out, f"same_s{seed}"), plain)
    equal = run(os.path.join(args.out, f"equal_s{seed}"),
                plain + [f"--config.model.widths=({','.join(map(str, scaled))})"])
    per_seed.append({"seed": seed, "epochs": epochs,
                     "sparsify_epochs": nr["sparsify_epochs"],
                     "nr": 100 * nr["final"]["top1"], "nr_old": 100 * nr["final"]["old_top1"],
                     "nr_new": 100 * nr["final"]["new_top1"],
                     "same": 100 * same["final"]["top1"], "equal": 100 * equal["final"]["top1"],
                     "params_nr": target, "params_same": same_params(name, widths),
                     "params_equal": n_equal, "equal_widths": scaled})
  rows = []
  for key, label in (("nr", "NR (prediction z_old + z_new)"), ("nr_old", "NR, old alone"),
                     ("nr_new", "NR, new alone"), ("same", "plain, same architecture"),
                     ("equal", "plain, NR's parameter count")):
    v = np.array([r[key] for r in per_seed])
    rows.append({"model": label, "top1": f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
                 if len(v) > 1 else f"{v[0]:.2f}",
                 "params": {"nr": "params_nr", "same": "params_same", "equal": "params_equal"
                            }.get(key) and int(np.mean([r[{"nr": "params_nr", "same": "params_same",
                                                            "equal": "params_equal"}[key]]
                                                        for r in per_seed]))})
  print(format_table(rows, ["model", "top1", "params"]))
  print(format_table(per_seed, ["seed", "sparsify_epochs", "epochs", "nr", "nr_old", "nr_new",
                                "same", "equal", "params_nr", "params_same", "params_equal"]))
  diffs = {}
  for base in ("same", "equal"):
    d = np.array([r["nr"] - r[base] for r in per_seed])
    diffs[base] = (float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0)
    print(f"NR minus {base}: {d.mean():+.2f} ± {diffs[base][1]:.2f} (paired, "
          f"{len(d)} seeds)")
  for r in nr_runs:
    s = r["surgery"]
    print(f"seed utilisation by epoch: {[round(u['utilisation'], 3) for u in r['utilisation']]}")
    print(f"  widths {s['widths_before']} -> alive {s['alive']} -> {s['widths_after']} "
          f"(r = {s['ratio']:.3f}, surgery {s['surgery_seconds']:.2f} s)")
  os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
  print("plot:", plots.plot_rejuvenation({name: nr_runs}, args.plot))
  os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
  with open(args.json, "w") as f:
    json.dump({"per_seed": per_seed, "paired": diffs, "nr_runs": nr_runs}, f, indent=1)


def same_params(name, widths) -> int:
  return param_count(name, widths)


if __name__ == "__main__":
  main()
