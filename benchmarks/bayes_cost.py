"""What Bayes by Backprop costs: the train step of LeNet-5 with every conv
and fc Bayesian, against the deterministic step, side by side in one
process (interleaved rounds; the median of the rounds' per-step times).

    det      configs/lenet5_fmnist.py's model and SGD step
    reparam  configs/bbb_lenet5_fmnist.py: one weight draw per batch, the
             mixture prior's Monte-Carlo KL, Adam
    flipout  the same with flipout (a second pass over each layer)
    local    the same with the local reparameterisation (a second pass on
             x^2, one extra weight draw for the KL)
    moped    configs/moped_lenet5_fmnist.py's step (reparam, closed-form KL
             against the deterministic weights)

    .venv/bin/python benchmarks/bayes_cost.py --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nr_cost import _state, _stepper, _time  # noqa: E402  (benchmarks/)
from neurojax import models, parallel  # noqa: E402
from neurojax.config import load_config_file  # noqa: E402
from neurojax.methods import bayes  # noqa: E402
from neurojax.tables import format_table  # noqa: E402
from neurojax.train.experiment import config_model_spec  # noqa: E402
from neurojax.train.optimizers import make_optimizer  # noqa: E402

SHAPE, BATCH = (28, 28, 1), 128


def _config(name: str, **bayes_fields):
  c = load_config_file(os.path.join(ROOT, "configs", name))
  for k, v in bayes_fields.items():
    c.bayes[k] = v
  return c


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  mesh = parallel.make_mesh()
  lr = lambda step: 1e-3
  variants = {"det": (_config("lenet5_fmnist.py"), None)}
  for est in ("reparam", "flipout", "local"):
    variants[est] = (_config("bbb_lenet5_fmnist.py", estimator=est), est)
  variants["moped"] = (_config("moped_lenet5_fmnist.py"), "reparam")
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({"image": rng.normal(size=(BATCH, *SHAPE)).astype(np.float32),
                                "label": rng.integers(0, 10, BATCH).astype(np.int32)}, mesh)
  built = {}
  for name, (c, est) in variants.items():
    if est is None:
      model, objective = models.build(config_model_spec(c, 10)), None
    else:
      model = models.build(bayes.model_spec(c, 10, SHAPE))
      objective = bayes.objective(c, 60_000)
    variables = model.init({"params": jax.random.PRNGKey(0)}, np.zeros((1, *SHAPE), np.float32),
                           train=False)
    tx = make_optimizer(c.optimizer, lr, variables["params"])
    step = _stepper(model, tx, objective, mesh)
    state = jax.device_put(_state(model, tx, variables), parallel.replicated(mesh))
    state, _ = _time(step, state, batch, 2)                    # compile, warm
    built[name] = [step, state]
  times = {name: [] for name in built}
  for _ in range(args.rounds):
    for name, entry in built.items():
      entry[1], t = _time(entry[0], entry[1], batch, args.steps)
      times[name].append(t)
  med = {k: float(np.median(v)) for k, v in times.items()}
  rows = [{"step": k, "ms": 1000 * v, "images_per_sec": BATCH / v, "vs_det": v / med["det"]}
          for k, v in med.items()]
  print(f"LeNet-5, batch {BATCH} of 28x28x1, {jax.devices()[0].device_kind}, median of "
        f"{args.rounds} interleaved rounds of {args.steps} steps")
  print(format_table(rows, ["step", "ms", "images_per_sec", "vs_det"]))


if __name__ == "__main__":
  main()
