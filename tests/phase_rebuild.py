"""A two-phase run whose second phase widens the model (for test_core).

    python tests/phase_rebuild.py WORKDIR [KILL_AT_STEP]

Phase 1 trains `test_mlp` (width 8); phase 2 starts by rebuilding the
experiment with width 16: the old weights are copied into the leading block
of a fresh init. With KILL_AT_STEP the process SIGKILLs itself right after
the checkpoint of that step was started.
"""

import os
import signal
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neurojax import models
from neurojax.train import phases
from neurojax.train.experiment import setup
from neurojax.train.state import init_variables

if "test_mlp" not in models.names():
  @models.register("test_mlp")
  class MLP(nn.Module):
    num_classes: int
    width: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.relu(nn.Dense(self.width, name="hidden")(x.reshape(x.shape[0], -1)))
      return nn.Dense(self.num_classes, name="out")(x)


def config():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config.get_config("lenet_300_100")
  from neurojax.config import model_config  # pylint: disable=g-import-not-at-top
  c.model = model_config("test_mlp")
  c.num_steps = 60
  c.checkpoint_every_steps = 10
  c.eval_every_steps = 30
  c.async_checkpoint = True
  return c


def widen(exp, state):
  """The surgery: width 8 -> 16, the trained block kept, the rest fresh."""
  exp.rebuild(dict(exp.model_spec, options=dict(exp.model_spec["options"], width=16)))
  fresh, _ = init_variables(exp.model, jax.random.PRNGKey(42), exp.data.info.image_shape)
  old = state.params
  params = {"hidden": {"kernel": fresh["hidden"]["kernel"].at[:, :8].set(old["hidden"]["kernel"]),
                       "bias": fresh["hidden"]["bias"].at[:8].set(old["hidden"]["bias"])},
            "out": {"kernel": fresh["out"]["kernel"].at[:8].set(old["out"]["kernel"]),
                    "bias": old["out"]["bias"]}}
  return exp.new_state(state, params, {})


def main(workdir, kill_at=None):
  import ml_collections  # pylint: disable=g-import-not-at-top
  exp = setup(ml_collections.ConfigDict(config()), workdir)
  if kill_at is not None:
    save = exp.save
    def save_then_die(step, state):
      save(step, state)
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    exp.save = save_then_die
  phases.run(exp, [phases.Phase("narrow", 30), phases.Phase("wide", 30, enter=widen)])


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
