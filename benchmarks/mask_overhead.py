"""Step-time overhead of masked (pruned) training against dense, LeNet-5.

Both steps are neurojax's real train step with the optimizer `make_optimizer`
builds (SGD+momentum+weight decay, wrapped in `sparsity.masked`): the dense
one with no masks in the state, the masked one with global-magnitude masks
at 8% density. They run interleaved in short blocks, back to back, in one
process (the order alternates). Each round gives one paired ratio, masked
block time / dense block time, so load that drifts over the run cancels;
the median of those ratios is the overhead.

    .venv/bin/python benchmarks/mask_overhead.py [--rounds 40] [--steps 10] [--batch 128]
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

from neurojax import models, parallel, sparsity as sp  # noqa: E402
from neurojax.config import base_config  # noqa: E402
from neurojax.train import steps  # noqa: E402
from neurojax.train.optimizers import make_optimizer  # noqa: E402
from neurojax.train.state import create_train_state  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=40)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--density", type=float, default=0.08,
                      help="fraction of weights kept (1.0: the masking work alone)")
  args = parser.parse_args()

  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get_model("lenet5", num_classes=10)
  cfg = base_config().optimizer
  params0 = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))["params"]
  tx = make_optimizer(cfg, lambda _: 0.01, params0)
  step = steps.jit_train_step(steps.train_step_fn(model, tx, label_smoothing=0.1), mesh)
  dense = create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28, 1),
                             parallel.replicated(mesh))
  masks = sp.global_topk(sp.magnitude(dense.params, sp.dense_masks(dense.params)), args.density)
  # A copy: the step donates its state, and the two states must not share buffers.
  masked = jax.tree.map(lambda x: jax.numpy.array(x, copy=True),
                        dense.replace(params=sp.apply(dense.params, masks), masks=masks))
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({"image": rng.random((args.batch, 28, 28, 1), np.float32),
                                "label": rng.integers(0, 10, args.batch).astype(np.int32)}, mesh)
  states = {"dense": dense, "masked": masked}
  for name in states:                       # compile + warm up
    for _ in range(5):
      states[name], m = step(states[name], batch)
    jax.block_until_ready(m)
  times = {name: [] for name in states}
  for r in range(args.rounds):
    for name in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        states[name], m = step(states[name], batch)
      jax.block_until_ready((states[name], m))
      times[name].append((time.perf_counter() - t0) / args.steps)
  med = {k: statistics.median(v) for k, v in times.items()}
  ratios = sorted(m / d for m, d in zip(times["masked"], times["dense"]))
  quartiles = statistics.quantiles(ratios, n=4)
  overhead = statistics.median(ratios) - 1
  pruned = np.concatenate([np.asarray(w)[~np.asarray(m)] for m, w in zip(
      jax.tree.leaves(masks), jax.tree.leaves(sp.map_masked(lambda _, w: w, masks,
                                                            states["masked"].params)))])
  assert np.all(pruned == 0.0), "pruned weights moved"
  print(f"load average: {os.getloadavg()}")
  print("| step | median ms | min-max ms |\n|---|---:|---:|")
  for k, v in times.items():
    print(f"| {k} | {1e3 * med[k]:.1f} | {1e3 * min(v):.1f}-{1e3 * max(v):.1f} |")
  print(f"masked/dense step time, median of {len(ratios)} paired ratios: {1 + overhead:.3f} "
        f"(overhead {100 * overhead:+.1f}%; quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}); "
        f"train step compiles: {step._cache_size()}")
  os.makedirs("benchmarks/out", exist_ok=True)
  with open("benchmarks/out/mask_overhead.json", "w") as f:
    json.dump({"times_s": times, "median_s": med, "paired_ratios": ratios,
               "overhead": overhead, "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  main()
