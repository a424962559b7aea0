"""What Neural Rejuvenation costs: the train step after the surgery against
before it, and the surgery's wall-clock including the re-jit.

The model is configs/nr_fmnist.py's (NR's VGG-19 at 1/16 width, batch 64 of
28x28x1). The sparsified state has the alive channel counts a run's surgery
found (`--surgery runs/nr/nr_s0/rejuvenation.json`): in each layer that many
channels keep |gamma| = 0.5 and the rest get 1e-5. Timed side by side in one
process, in interleaved rounds (median of the rounds' per-step times):
    before      the sparsified model's step (the L1 term on, as in the run)
    after       the split model's step (cross blocks masked, two logit sets)
    after_plain a plain model of the widened widths (no split: what the
                split itself costs)
The surgery: from the sparsified state to the first finished step of the
split model: utilisation, new widths, copying the survivors, the new model
and optimizer, and the jit compile of its train step.

    .venv/bin/python benchmarks/nr_cost.py --surgery runs/nr/nr_s0/rejuvenation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurojax import models, parallel  # noqa: E402
from neurojax import sparsity as sp  # noqa: E402
from neurojax.config import load_config_file  # noqa: E402
from neurojax.methods import rejuvenation as nr  # noqa: E402
from neurojax.tables import format_table  # noqa: E402
from neurojax.train import steps as steps_lib  # noqa: E402
from neurojax.train.optimizers import make_optimizer  # noqa: E402
from neurojax.train.state import TrainState  # noqa: E402

SHAPE = (28, 28, 1)


def _state(model, tx, variables):
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(1))


def _stepper(model, tx, objective, mesh):
  return steps_lib.jit_train_step(steps_lib.train_step_fn(model, tx, objective=objective), mesh)


def _time(step, state, batch, n):
  start = time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics["loss"])
  return state, (time.perf_counter() - start) / n


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--surgery", default="runs/nr/nr_s0/rejuvenation.json")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  with open(args.surgery) as f:
    record = json.load(f)
  c = load_config_file(os.path.join(ROOT, "configs", "nr_fmnist.py"))
  mesh = parallel.make_mesh()
  name = c.model.name
  model = models.get_model(name, num_classes=10, widths=tuple(c.model.widths))
  variables = jax.device_get(model.init({"params": jax.random.PRNGKey(0)},
                                        jnp.zeros((1, *SHAPE)), train=False))
  groups = models.channel_groups(name, model)
  graph = nr.Graph.of(variables["params"], groups, name)
  flat = traverse_util.flatten_dict(variables, sep="/")
  for scale, alive in zip(graph.scales, record["alive"]):
    n = flat["params/" + scale].shape[0]
    flat["params/" + scale] = np.where(np.arange(n) < alive, 0.5, 1e-5).astype(np.float32)
  variables = traverse_util.unflatten_dict(flat, sep="/")
  objective = nr.objective()
  lr = lambda step: jnp.asarray(0.1)
  mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: "/".join(str(k.key) for k in p) in set(graph.scales), params)
  tx_before = sp.with_l1(make_optimizer(c.optimizer, lr, variables["params"]), 5e-3, mask)
  before = _stepper(model, tx_before, objective, mesh)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({"image": rng.normal(size=(64, *SHAPE)).astype(np.float32),
                                "label": rng.integers(0, 10, 64).astype(np.int32)}, mesh)
  state_before = jax.device_put(_state(model, tx_before, variables), parallel.replicated(mesh))
  state_before, _ = _time(before, state_before, batch, 2)       # compile, warm

  # The surgery, to the end of the split model's first step.
  start = time.perf_counter()
  params = jax.device_get(state_before.params)
  alive = nr.alive_channels(params, graph)
  live, total = nr.utilisation(params, graph, alive)
  ratio = math.sqrt(total / live)
  widths = nr.new_widths(alive, ratio)
  new = nr.rejuvenate(nr.steps_lib.model_variables(params, jax.device_get(
      state_before.batch_stats)), graph, alive, widths, jax.random.PRNGKey(2))
  base = models.spec(name, num_classes=10, widths=widths)
  split = models.build(nr.split_spec(base, graph, alive, widths, False))
  tx_after = make_optimizer(c.optimizer, lr, new["params"])
  state_after = jax.device_put(_state(split, tx_after, new), parallel.replicated(mesh))
  copied = time.perf_counter()
  after = _stepper(split, tx_after, objective, mesh)
  state_after, metrics = after(state_after, batch)
  jax.block_until_ready(metrics["loss"])
  surgery = time.perf_counter() - start
  copy = copied - start

  plain = models.get_model(name, num_classes=10, widths=tuple(widths))
  plain_vars = plain.init({"params": jax.random.PRNGKey(3)}, jnp.zeros((1, *SHAPE)), train=False)
  tx_plain = make_optimizer(c.optimizer, lr, plain_vars["params"])
  plain_step = _stepper(plain, tx_plain, None, mesh)
  state_plain = jax.device_put(_state(plain, tx_plain, plain_vars), parallel.replicated(mesh))
  state_plain, _ = _time(plain_step, state_plain, batch, 2)
  state_after, _ = _time(after, state_after, batch, 2)

  times = {"before": [], "after": [], "after_plain": []}
  for _ in range(args.rounds):
    state_before, t = _time(before, state_before, batch, args.steps)
    times["before"].append(t)
    state_after, t = _time(after, state_after, batch, args.steps)
    times["after"].append(t)
    state_plain, t = _time(plain_step, state_plain, batch, args.steps)
    times["after_plain"].append(t)
  med = {k: float(np.median(v)) for k, v in times.items()}
  rows = [{"step": k, "ms": 1000 * v, "vs_before": v / med["before"]} for k, v in med.items()]
  print(f"widths {record['widths_before']} -> {widths}; {jax.devices()[0].device_kind}, "
        f"batch 64, median of {args.rounds} rounds of {args.steps} steps")
  print(format_table(rows, ["step", "ms", "vs_before"]))
  print(f"surgery to the end of the first split step: {surgery:.2f} s (utilisation, widths, "
        f"copy and new state {copy:.2f} s; the rest is the jit compile and one step); a steady "
        f"step is {1000 * med['after']:.0f} ms")


if __name__ == "__main__":
  main()
