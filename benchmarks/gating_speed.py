"""Training-step time of the K, D and W heads (METHODS.md section 1) on
2048-d features, as in the original's ResNet-152 head: K is Kakuritsu
(exact per-sample synapse gates, p=0.5), D is Linear + Dropout(0.5), W plain
Linear. Each step is the real jitted forward + backward + SGD update of the
head; the three run interleaved in blocks, the order rotating each round,
and the ratios to W are paired per round.

    .venv/bin/python benchmarks/gating_speed.py [--batch 64] [--rounds 10] [--steps 3]

`--before` adds "K0": the K head with the gates of the first
implementation, interleaved with the others (one column's [batch, in] mask
at a time from `jax.random.bits(fold_in(key, j))`, expanded to floats and
contracted by an einsum), for a before/after ratio in one process.

With `--backbone resnet50 --image 64` each step is method="kakuritsu"'s
whole train step instead: images through the frozen backbone (BN in train
mode), then the head, with the optimizer freezing the backbone.
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
from neurojax.nn import gating  # noqa: E402

HEADS = {"K": (Gate("kakuritsu", 0.5), "kakuritsu"), "D": (Gate("dropout", rate=0.5), "torch"),
         "W": (Gate("none"), "torch")}


def first_gated_matmul(x, kernel, key, p, max_elements=1 << 22, *unused):
  """The first implementation's gates and product, for `--before` (p=0.5)."""
  assert p == 0.5, "K0 is written for p=0.5"
  batch, fan_in = x.shape
  fan_out = kernel.shape[1]
  block = max(1, min(fan_out, max_elements // (batch * fan_in)))
  blocks = -(-fan_out // block)
  columns = jnp.arange(blocks * block).reshape(blocks, block)
  kernels = jnp.pad(kernel, ((0, 0), (0, blocks * block - fan_out))).T.reshape(blocks, block,
                                                                                 fan_in)
  shifts = jnp.arange(32, dtype=jnp.uint32)

  def column_mask(j):
    words = jax.random.bits(jax.random.fold_in(key, j), (batch, -(-fan_in // 32)), jnp.uint32)
    return (((words[..., None] >> shifts) & 1) < 1).reshape(batch, -1)[:, :fan_in]

  def one_block(args):
    cols, w = args
    keep = jax.vmap(column_mask)(cols)
    return jnp.einsum("bi,cbi,ci->bc", x, keep.astype(x.dtype), w)

  y = jax.lax.map(one_block, (columns, kernels))
  return y.transpose(1, 0, 2).reshape(batch, blocks * block)[:, :fan_out]


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


def make_full_step(head, backbone, image, hidden, classes):
  """method="kakuritsu"'s train step and a fresh state, on `backbone` images."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from neurojax import models  # pylint: disable=g-import-not-at-top
  from neurojax.methods import kakuritsu  # pylint: disable=g-import-not-at-top
  from neurojax.train.optimizers import make_optimizer  # pylint: disable=g-import-not-at-top
  from neurojax.train.state import create_train_state  # pylint: disable=g-import-not-at-top
  from neurojax.train.steps import train_step_fn  # pylint: disable=g-import-not-at-top
  k = ml_collections.ConfigDict(dict(p=0.5, dropout=0.5, hidden=hidden, train_backbone=False,
                                     backbone_bn="batch"))
  model = models.get_model(backbone, num_classes=0)
  gate = kakuritsu.head_gates(k)[head]
  model = kakuritsu.OnBackbone(model, GatedHead(hidden, classes, "kakuritsu" if head == "K"
                                                else "torch"), gate)
  cfg = ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, nesterov=False,
                                       weight_decay=1e-4, weight_decay_exclude="",
                                       freeze="^backbone/"))
  shape = (image, image, 3)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape))))
  tx = make_optimizer(cfg, 0.01, abstract["params"])
  state = create_train_state(model, tx, jax.random.PRNGKey(0), shape)
  return jax.jit(train_step_fn(model, tx), donate_argnums=0), state


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--backbone", default="", help="time the whole step on this frozen "
                      "backbone (e.g. resnet50), not the head alone")
  parser.add_argument("--image", type=int, default=64, help="the backbone's image size")
  parser.add_argument("--before", action="store_true", help="add K0, the first implementation")
  args = parser.parse_args()
  tx = optax.sgd(0.01, momentum=0.9)
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.integers(0, 1000, args.batch))
  runs = {}
  heads = dict(HEADS, **({"K0": HEADS["K"]} if args.before else {}))
  for name, (gate, init) in heads.items():
    if name == "K0":
      gating.gated_matmul, current = first_gated_matmul, gating.gated_matmul  # while tracing
    if args.backbone:
      step, state = make_full_step(name[0], args.backbone, args.image, 1000, 1000)
      batch = {"image": jnp.asarray(rng.standard_normal((args.batch, args.image, args.image, 3)),
                                    jnp.float32), "label": y}
      run = lambda step, state, key, batch=batch: step(state[0], batch)[:1]  # noqa: E731
      state = [state]
    else:
      step, params = make_step(gate, init, 1000, 1000, tx)
      state = [params, tx.init(params)]
      x = jnp.asarray(rng.standard_normal((args.batch, 2048)), jnp.float32)
      run = lambda step, state, key, x=x: step(*state, x, y, key)  # noqa: E731
    state[:] = run(step, state, jax.random.PRNGKey(0))             # compile
    jax.block_until_ready(state)
    if name == "K0":
      gating.gated_matmul = current
    runs[name] = (step, state, run)
  times = {name: [] for name in runs}
  names = list(runs)
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      step, state, run = runs[name]
      t0 = time.perf_counter()
      for s in range(args.steps):
        state[:] = run(step, state, jax.random.PRNGKey(r * 100 + s))
      jax.block_until_ready(state)
      times[name].append((time.perf_counter() - t0) / args.steps)
  what = (f"{args.backbone} at {args.image} px (frozen) + head" if args.backbone
          else "the head alone")
  print(f"batch {args.batch}, {what}, 2048 -> 1000 -> 1000; load average {os.getloadavg()}")
  print("| head | step median ms | ratio to W (median of paired rounds) |\n|---|---:|---:|")
  for name in names:
    ratio = statistics.median(a / w for a, w in zip(times[name], times["W"]))
    print(f"| {name} | {1e3 * statistics.median(times[name]):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
  main()
