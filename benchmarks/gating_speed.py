"""Training-step time of the K, D and W heads (METHODS.md section 1) on
2048-d features, as in the original's ResNet-152 head: K is Kakuritsu
(exact per-sample synapse gates, p=0.5), D is Linear + Dropout(0.5), W plain
Linear. Each step is the real jitted forward + backward + SGD update of the
head; the three run interleaved in blocks, the order rotating each round,
and the ratios to W are paired per round.

    .venv/bin/python benchmarks/gating_speed.py [--batch 64] [--rounds 10] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from neurojax.nn import Gate, GatedHead  # noqa: E402

HEADS = {"K": (Gate("kakuritsu", 0.5), "kakuritsu"), "D": (Gate("dropout", rate=0.5), "torch"),
         "W": (Gate("none"), "torch")}


def make_step(gate, weight_init, hidden, classes, tx):
  head = GatedHead(hidden=hidden, num_classes=classes, weight_init=weight_init)

  def step(params, opt_state, x, y, key):
    def loss(p):
      logits = head.apply({"params": p}, x, gate,
                          rngs={"gate": key, "dropout": jax.random.fold_in(key, 1)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 2048)))["params"]
  return jax.jit(step, donate_argnums=(0, 1)), params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  tx = optax.sgd(0.01, momentum=0.9)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((args.batch, 2048)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 1000, args.batch))
  runs = {}
  for name, (gate, init) in HEADS.items():
    step, params = make_step(gate, init, 1000, 1000, tx)
    state = [params, tx.init(params)]
    state[:] = step(*state, x, y, jax.random.PRNGKey(0))             # compile
    jax.block_until_ready(state)
    runs[name] = (step, state)
  times = {name: [] for name in runs}
  names = list(runs)
  for r in range(args.rounds):
    for name in names[r % 3:] + names[:r % 3]:
      step, state = runs[name]
      t0 = time.perf_counter()
      for s in range(args.steps):
        state[:] = step(*state, x, y, jax.random.PRNGKey(r * 100 + s))
      jax.block_until_ready(state)
      times[name].append((time.perf_counter() - t0) / args.steps)
  print(f"batch {args.batch}, 2048 -> 1000 -> 1000; load average {os.getloadavg()}")
  print("| head | step median ms | ratio to W (median of paired rounds) |\n|---|---:|---:|")
  for name in names:
    ratio = statistics.median(a / w for a, w in zip(times[name], times["W"]))
    print(f"| {name} | {1e3 * statistics.median(times[name]):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
  main()
