"""Memory and step time of the Dit quadratic term, blocked vs the outer product.

q_o(x) = sum_ij Q[o,i,j] x_i x_j per pixel at ConvNeXt-T stage-0 size (C=96,
56x56). For each version, the compiled forward + backward (gradients of x
and Q) and its XLA scratch memory (`memory_analysis().temp_size_in_bytes`),
then step times: the two versions interleaved, the order alternating, the
ratio paired per round.

    .venv/bin/python benchmarks/quadratic_cost.py [--batch 32] [--rounds 3] [--memory-only]
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

from neurojax.nn.quadratic import quadratic, quadratic_naive  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=56)
  parser.add_argument("--channels", type=int, default=96)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--memory-only", action="store_true")
  args = parser.parse_args()
  shape = (args.batch, args.size, args.size, args.channels)
  c = args.channels
  versions = {"blocked": quadratic, "outer product": quadratic_naive}
  compiled = {}
  print(f"x {shape}, Q ({c}, {c}, {c}); forward + backward")
  for name, f in versions.items():
    grad = jax.jit(jax.grad(lambda x, q, f=f: jnp.sum(f(x, q)), argnums=(0, 1)))
    compiled[name] = grad.lower(jax.ShapeDtypeStruct(shape, jnp.float32),
                                jax.ShapeDtypeStruct((c, c, c), jnp.float32)).compile()
    print(f"{name}: XLA scratch {compiled[name].memory_analysis().temp_size_in_bytes / 1e6:,.0f} MB")
  if args.memory_only:
    return
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q = jnp.asarray(rng.standard_normal((c, c, c)) * 0.01, jnp.float32)
  times = {name: [] for name in versions}
  names = list(versions)
  for r in range(args.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled[name](x, q))
      times[name].append(time.perf_counter() - t0)
  ratio = statistics.median(b / n for b, n in zip(times["blocked"], times["outer product"]))
  for name in names:
    print(f"{name}: median {statistics.median(times[name]):.2f} s per step")
  print(f"blocked / outer product time, median of {args.rounds} paired rounds: {ratio:.2f}; "
        f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
