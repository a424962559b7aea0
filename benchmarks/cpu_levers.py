"""Each CPU speed lever of the train step, measured alone, in one process.

For LeNet-5 and ResNet-20 (the models of `throughput.py`, batch 128, the
same step and optimizer), every arm is neurojax's jitted train step; the
arms run interleaved in blocks of `--steps` steps for `--rounds` rounds, the
order rotating each round, and the table gives each arm's median ms/step
and its median per-round ratio to the baseline arm of its lever:

  eigen_convs the step compiled with XLA's default XLA:CPU options
              (YNNPACK convolutions) against `fastpath.EIGEN_CONVS`
              (convolutions on XLA's Eigen kernels), passed to
              `.compile(compiler_options)`: one process, both arms.
  max_pool    (LeNet-5) `nn.max_pool` against `fastpath.max_pool`, the
              reshape + max with its own gradient: two traces of the model,
              one with the fast path off, one with it on.
  batch_norm  (ResNet-20) `nn.BatchNorm`, whose gradient is autodiff's,
              against `fastpath.BatchNorm`, the same forward with a
              hand-written one-pass gradient (`jax.custom_vjp`).
  scan4       one dispatch per step against `lax.scan` over 4 stacked
              batches per dispatch (a `steps_per_call` of 4).

Usage:
  .venv/bin/python benchmarks/cpu_levers.py [--models lenet5,resnet20] [--rounds 5] [--steps 8] [--levers batch_norm]
Writes benchmarks/out/cpu_levers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import throughput as tp  # noqa: E402  (its models and builders; it needs torch)
from neurojax import models, parallel  # noqa: E402
from neurojax.nn import fastpath  # noqa: E402
from neurojax.train import steps  # noqa: E402

OUT = _HERE / "out" / "cpu_levers.json"


def arms_for(name: str, batch: int, seed: int, only=None):
  """{lever: {arm: (fn(state, batch_or_stack) -> (state, metrics), steps per call)}},
  the state and the device batches."""
  mesh, state, _ = tp.build_jax(name, seed)
  model = models.get_model(name, num_classes=tp.NUM_CLASSES)
  rng = np.random.default_rng(seed)
  batches = [parallel.shard_batch(b, mesh)
             for b in tp.host_batches(rng, 4, batch, tp.MODELS[name]["shape"])]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)

  tx = optax.chain(optax.add_decayed_weights(tp.WEIGHT_DECAY),
                   optax.sgd(tp.LR, momentum=tp.MOMENTUM))  # as tp.build_jax's

  def step_fn():
    return steps.train_step_fn(model, tx, label_smoothing=tp.LABEL_SMOOTHING)

  def compiled(mode, options=None, scan=False):
    fastpath.set_mode(mode)
    fn = step_fn()
    if scan:
      jitted = jax.jit(lambda s, bs: jax.lax.scan(fn, s, bs), donate_argnums=0)
      lowered = jitted.lower(state, stacked)
    else:
      lowered = steps.jit_train_step(fn, mesh).lower(state, batches[0])
    return lowered.compile(options or {})

  fast = fastpath.EIGEN_CONVS
  levers = {"eigen_convs": {"XLA default (YNNPACK convs)": (lambda: compiled("on", {}), 1),
                          "fastpath.EIGEN_CONVS (Eigen convs)": (lambda: compiled("on", fast), 1)},
            "scan4": {"1 step per dispatch": (lambda: compiled("on", fast), 1),
                      "lax.scan, 4 steps per dispatch": (lambda: compiled("on", fast, scan=True), 4)}}
  if name == "resnet20":  # the trace with the fast path off differs only in its BatchNorm
    levers["batch_norm"] = {"nn.BatchNorm (autodiff gradient)": (lambda: compiled("off", fast), 1),
                            "fastpath.BatchNorm (one-pass gradient)": (lambda: compiled("on", fast), 1)}
  if name == "lenet5":
    levers["max_pool"] = {"nn.max_pool (reduce_window)": (lambda: compiled("off", fast), 1),
                          "fastpath.max_pool (reshape + max)": (lambda: compiled("on", fast), 1)}
  levers = {lever: {arm: (build(), per_call) for arm, (build, per_call) in arms.items()}
            for lever, arms in levers.items() if not only or lever in only}
  fastpath.set_mode("auto")
  return levers, state, batches, stacked


def run_model(name, args):
  levers, state, batches, stacked = arms_for(name, args.batch, args.seed,
                                             args.levers.split(",") if args.levers else None)
  times = {lv: {arm: [] for arm in arms} for lv, arms in levers.items()}
  for r in range(args.rounds):
    for lever, arms in levers.items():
      order = list(arms)[r % 2:] + list(arms)[:r % 2]
      for arm in order:
        fn, per_call = arms[arm]
        inputs = stacked if per_call > 1 else batches[r % len(batches)]
        state, _ = fn(state, inputs)                      # warm, and a fresh start
        jax.block_until_ready(state)
        calls = max(1, args.steps // per_call)
        t0 = time.perf_counter()
        for _ in range(calls):
          state, metrics = fn(state, inputs)
        jax.block_until_ready((state, metrics))
        times[lever][arm].append((time.perf_counter() - t0) / (calls * per_call) * 1e3)
    print(f"{name} round {r + 1}/{args.rounds}", flush=True)
  rows = []
  for lever, arms in times.items():
    base = next(iter(arms))
    for arm, ms in arms.items():
      ratio = statistics.median(b / a for a, b in zip(ms, arms[base]))
      rows.append({"model": name, "lever": lever, "arm": arm,
                   "ms_per_step": statistics.median(ms), "speedup_vs_first_arm": ratio,
                   "rounds_ms": ms})
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="lenet5,resnet20")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--levers", default="", help="comma-separated subset, e.g. batch_norm,eigen_convs")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=Path, default=OUT)
  args = p.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"load {os.getloadavg()[0]:.2f}")
  rows = [row for name in args.models.split(",") for row in run_model(name, args)]
  lines = ["| model | lever | arm | ms/step (median) | speed-up vs the lever's first arm |",
           "|---|---|---|---:|---:|"]
  lines += [f"| {r['model']} | {r['lever']} | {r['arm']} | {r['ms_per_step']:.1f} | "
            f"{r['speedup_vs_first_arm']:.2f}x |" for r in rows]
  table = "\n".join(lines)
  print(table)
  print(f"load at end {os.getloadavg()[0]:.2f}")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps({"rows": rows, "table_markdown": table,
                                  "jax": jax.__version__}, indent=2) + "\n")
  return rows


if __name__ == "__main__":
  main()
