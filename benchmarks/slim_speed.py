"""Inference time of an FPGM run's slimmed model against its masked model.

Reads a finished `method=prune` FPGM run (`--workdir`): the masked model
from its newest checkpoint and the slim one from `<workdir>/slim`. Both
forward passes (eval mode, jitted) run interleaved in blocks; each round
gives a paired ratio slim/masked, and the median is reported.

    .venv/bin/python benchmarks/slim_speed.py --workdir runs/fpgm20 [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from neurojax import sparsity as sp  # noqa: E402
from neurojax.train.experiment import load_run  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--image-shape", type=int, nargs=3, default=(28, 28, 1),
                      help="if the export's model.json does not record it")
  args = parser.parse_args()

  _, model, state = load_run(args.workdir)
  masked_vars = {"params": state.params, "batch_stats": state.batch_stats}
  slim_model, slim_vars = sp.load_exported(os.path.join(args.workdir, "slim"))
  with open(os.path.join(args.workdir, "slim", "model.json")) as f:
    image_shape = json.load(f).get("image_shape") or args.image_shape
  images = np.random.default_rng(0).normal(size=(args.batch, *image_shape)).astype(np.float32)
  fns = {"masked": (jax.jit(lambda v, x: model.apply(v, x, train=False)), masked_vars),
         "slim": (jax.jit(lambda v, x: slim_model.apply(v, x, train=False)), slim_vars)}
  out = {k: f(v, images) for k, (f, v) in fns.items()}
  print(f"max |logits slim - masked|: {float(np.abs(out['slim'] - out['masked']).max()):.2e}")
  times = {k: [] for k in fns}
  for r in range(args.rounds):
    for name in (("masked", "slim") if r % 2 == 0 else ("slim", "masked")):
      f, v = fns[name]
      t0 = time.perf_counter()
      for _ in range(args.steps):
        y = f(v, images)
      jax.block_until_ready(y)
      times[name].append((time.perf_counter() - t0) / args.steps)
  ratios = [s / m for s, m in zip(times["slim"], times["masked"])]
  q = statistics.quantiles(ratios, n=4)
  print(f"load average: {os.getloadavg()}")
  for k, v in times.items():
    print(f"{k}: median {1e3 * statistics.median(v):.1f} ms per batch of {args.batch}")
  print(f"slim/masked time, median of {len(ratios)} paired ratios: {statistics.median(ratios):.3f}"
        f" (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
  main()
