"""Dit-ResNet-20 against ResNet-20 on Fashion-MNIST (the README's Dit experiment).

Both are `configs/resnet20_fmnist.py`'s recipe (the Dit CIFAR recipe sized
for a CPU); dit_resnet20 adds the quadratic term at stage 2's first block
with 10x lr on Q and LN_hw. A third arm, `dit lr 1x`, is dit_resnet20
without the 10x group (everything at the base lr). Seed s sets the init, the data order and the
10k-image training subset, the same for both models. Runs go to
<out>/<config>_s<seed>; finished ones (results.json) are skipped. Then it
prints final and best-epoch test top-1 (mean ± sample std), params, and the
train-step time ratio, measured here side by side: the two jitted train
steps (batch 128, forward + backward + SGD) interleaved in rounds, the order
alternating, the ratio paired per round.

    .venv/bin/python benchmarks/dit_fmnist.py --seeds 0 1 2 3 4 --arms resnet20 dit_resnet20 \
        --out runs/dit --plot docs/dit_fmnist.png
    .venv/bin/python benchmarks/dit_fmnist.py --seeds 0 1 2 --out runs/dit --plot docs/dit_fmnist_lr.png
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from neurojax import plots  # noqa: E402
from neurojax.config import load_config_file  # noqa: E402
from neurojax.train import experiment, steps  # noqa: E402
from neurojax.train.state import create_train_state  # noqa: E402

CONFIGS = ("resnet20_fmnist", "dit_resnet20_fmnist")
# arm: (config, extra overrides)
ARMS = {"resnet20": ("resnet20_fmnist", []), "dit_resnet20": ("dit_resnet20_fmnist", []),
        "dit_resnet20 lr 1x": ("dit_resnet20_fmnist", ["--config.optimizer.lr_groups=()"])}
WORKDIR = {"resnet20": "resnet20_fmnist", "dit_resnet20": "dit_resnet20_fmnist",
           "dit_resnet20 lr 1x": "dit_resnet20_fmnist_lr1x"}
SHAPE, CLASSES, STEPS_PER_EPOCH = (28, 28, 1), 10, 78


def train_step(name: str, batch_size: int):
  """The config's jitted train step, a fresh state and a random batch."""
  config = load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))
  model, schedule, tx = experiment.build_model_and_optimizer(
      config, CLASSES, SHAPE, STEPS_PER_EPOCH,
      experiment.total_steps(config, STEPS_PER_EPOCH))
  state = create_train_state(model, tx, jax.random.PRNGKey(0), SHAPE)
  step = jax.jit(steps.train_step_fn(model, tx, label_smoothing=config.label_smoothing,
                                     schedule=schedule), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((batch_size, *SHAPE)).astype(np.float32),
           "label": rng.integers(0, CLASSES, batch_size).astype(np.int32)}
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return step, state, batch, params


def step_times(batch_size: int, rounds: int, steps_per_round: int):
  """{config: (params, [seconds per step, one per round])}."""
  runs = {}
  for name in CONFIGS:
    step, state, batch, params = train_step(name, batch_size)
    state, _ = step(state, batch)                          # compile
    jax.block_until_ready(state)
    runs[name] = [step, state, batch, params, []]
  for r in range(rounds):
    for name in CONFIGS[r % 2:] + CONFIGS[:r % 2]:
      run = runs[name]
      t0 = time.perf_counter()
      for _ in range(steps_per_round):
        run[1], _ = run[0](run[1], run[2])
      jax.block_until_ready(run[1])
      run[4].append((time.perf_counter() - t0) / steps_per_round)
  return {name: (run[3], run[4]) for name, run in runs.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
  parser.add_argument("--out", default="runs/dit")
  parser.add_argument("--plot", default="docs/dit_fmnist.png")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  workdirs = {arm: [] for arm in ARMS}
  for seed in args.seeds:
    for arm, (name, overrides) in ARMS.items():
      if arm not in args.arms:
        continue
      workdir = os.path.join(args.out, f"{WORKDIR[arm]}_s{seed}")
      workdirs[arm].append(workdir)
      if os.path.exists(os.path.join(workdir, "results.json")):
        continue
      began = time.time()
      subprocess.run([sys.executable, "-m", "neurojax.main",
                      f"--config={os.path.join(ROOT, 'configs', name + '.py')}",
                      f"--workdir={os.path.abspath(workdir)}", f"--config.seed={seed}",
                      f"--config.data.subset_seed={seed}", "--config.progress=False",
                      *overrides], check=True, cwd=ROOT)
      print(f"{arm} seed {seed}: {time.time() - began:.0f} s", flush=True)
  workdirs = {arm: dirs for arm, dirs in workdirs.items() if dirs}
  rows = plots.supervised_summary([w for dirs in workdirs.values() for w in dirs],
                                  {w: arm for arm, dirs in workdirs.items() for w in dirs})
  times = step_times(128, args.rounds, args.steps)
  base = times[CONFIGS[0]][1]
  print(f"load average {os.getloadavg()}; step times: batch 128, {args.rounds} rounds of "
        f"{args.steps} steps")
  print("| model | runs | params | final test top-1 (%) | best epoch's test top-1 (%) "
        "| best epochs | step ms (median) | step time ratio |")
  print("|---|---:|---:|---:|---:|---|---:|---:|")
  for row in rows:
    params, t = times[ARMS[row["model"]][0]]
    ratio = statistics.median(a / b for a, b in zip(t, base))
    print(f"| {row['model']} | {row['runs']} | {params:,} | {100 * row['final_top1']:.2f} ± "
          f"{100 * row['final_std']:.2f} | {100 * row['best_top1']:.2f} ± "
          f"{100 * row['best_std']:.2f} | {', '.join(f'{e:g}' for e in row['best_epochs'])} | "
          f"{1e3 * statistics.median(t):.1f} | {ratio:.2f} |")
  finals = {row["model"]: np.asarray(row["finals"]) for row in rows}   # in seed order
  for arm, values in finals.items():
    if arm != "resnet20" and "resnet20" in finals and len(values) == len(finals["resnet20"]):
      gains = values - finals["resnet20"]
      print(f"{arm} minus resnet20, final top-1, paired by seed: "
            f"{', '.join(f'{100 * g:+.2f}' for g in gains)} (mean {100 * np.mean(gains):+.2f} "
            f"± {100 * np.std(gains, ddof=1):.2f})")
  print("plot:", plots.plot_supervised_summary(
      rows, args.plot, "Fashion-MNIST (10k train): test top-1, mean ± std over seeds"))


if __name__ == "__main__":
  main()
