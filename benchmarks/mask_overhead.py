"""Step-time overhead of masked (pruned) training against dense, LeNet-5.

Every arm is neurojax's real train step with the optimizer `make_optimizer`
builds (SGD+momentum+weight decay, wrapped in `sparsity.masked`):
  dense         no masks in the state;
  dense (copy)  the same again, a control: its ratio to `dense` is what this
                method reads when there is no difference (noise and bias);
  masked        global-magnitude masks at 8% density (`--density`).
They run interleaved in short blocks, back to back, in one process, the
order rotating each round. Each round gives paired ratios (arm / dense), so
load that drifts over the run cancels; their median is the overhead.

The masking work itself is timed apart too: the jitted optimizer update
alone (momentum, weight decay, the masking, applying the update), dense and
masked, relative to the dense train step. That number is small and stable;
the whole-step ratio is what a user sees, and is noisy on a shared machine.

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
import optax  # noqa: E402

from neurojax import models, parallel, sparsity as sp  # noqa: E402
from neurojax.config import base_config  # noqa: E402
from neurojax.train import steps  # noqa: E402
from neurojax.train.optimizers import make_optimizer  # noqa: E402
from neurojax.train.state import create_train_state  # noqa: E402


def time_update(tx, params, masks, rounds=20, calls=50) -> float:
  """Median seconds of one jitted optimizer update + apply (no donation)."""
  extra = {} if masks is None else {"masks": masks}

  def update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  update = jax.jit(update)
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  args = (grads, tx.init(params), params)
  jax.block_until_ready(update(*args))
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = update(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  return statistics.median(times)


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
  copy = lambda tree: jax.tree.map(lambda x: jax.numpy.array(x, copy=True), tree)
  masked = copy(dense.replace(params=sp.apply(dense.params, masks), masks=masks))
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({"image": rng.random((args.batch, 28, 28, 1), np.float32),
                                "label": rng.integers(0, 10, args.batch).astype(np.int32)}, mesh)
  states = {"dense": dense, "dense (copy)": copy(dense), "masked": masked}
  for name in states:                       # compile + warm up
    for _ in range(5):
      states[name], m = step(states[name], batch)
    jax.block_until_ready(m)
  times = {name: [] for name in states}
  for r in range(args.rounds):
    names = list(states)
    for name in names[r % 3:] + names[:r % 3]:          # rotate the order
      t0 = time.perf_counter()
      for _ in range(args.steps):
        states[name], m = step(states[name], batch)
      jax.block_until_ready((states[name], m))
      times[name].append((time.perf_counter() - t0) / args.steps)
  med = {k: statistics.median(v) for k, v in times.items()}
  ratios = {k: sorted(a / d for a, d in zip(times[k], times["dense"]))
            for k in ("dense (copy)", "masked")}
  pruned = np.concatenate([np.asarray(w)[~np.asarray(m)] for m, w in zip(
      jax.tree.leaves(masks), jax.tree.leaves(sp.map_masked(lambda _, w: w, masks,
                                                            states["masked"].params)))])
  assert np.all(pruned == 0.0), "pruned weights moved"
  update = {"dense": time_update(tx, states["dense"].params, None),
            "masked": time_update(tx, states["masked"].params, masks)}
  print(f"load average: {os.getloadavg()}; train step compiles: {step._cache_size()}")
  print("| arm | step median ms | min-max ms | ratio to dense (median of "
        f"{args.rounds} pairs) | quartiles |\n|---|---:|---:|---:|---:|")
  for k, v in times.items():
    r = ratios.get(k)
    q = statistics.quantiles(r, n=4) if r else None
    print(f"| {k} | {1e3 * med[k]:.1f} | {1e3 * min(v):.1f}-{1e3 * max(v):.1f} | "
          + (f"{statistics.median(r):.3f} | {q[0]:.3f}-{q[2]:.3f} |" if r else "1 | |"))
  extra = (update["masked"] - update["dense"]) / med["dense"]
  print(f"optimizer update alone: dense {1e3 * update['dense']:.2f} ms, masked "
        f"{1e3 * update['masked']:.2f} ms; the masking adds {100 * extra:+.2f}% of a dense step")
  overhead = statistics.median(ratios["masked"]) - 1
  os.makedirs("benchmarks/out", exist_ok=True)
  with open("benchmarks/out/mask_overhead.json", "w") as f:
    json.dump({"times_s": times, "median_s": med, "paired_ratios": ratios,
               "overhead": overhead, "update_s": update, "update_overhead": extra,
               "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  main()
