"""The training state: one pytree holding everything a run needs to resume."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """step, params, batch_stats, opt_state, rng, masks and ema_params.

  `rng` is the run's base key; the key of step s is `fold_in(rng, s)`.
  `batch_stats` is `{}` for models without BatchNorm. `masks` is a pytree
  shaped like `params` (bool leaves, or None for "not masked"), or None.
  `ema_params` is the exponential moving average of `params` (model EMA,
  `config.ema_decay`), or None.
  The model and optimizer are not part of the state: the step functions
  close over them, so the state is pure data that orbax can save.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  masks: Any = None
  ema_params: Any = None


def init_variables(model, key, input_shape, dtype=jnp.float32):
  """Initialises `model` on a dummy batch of one; returns (params, batch_stats)."""
  variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *input_shape), dtype),
                         train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(model, tx, key, input_shape, sharding=None, ema=False) -> TrainState:
  """A fresh state: params from `key`, the run's base rng derived from it;
  with `ema`, `ema_params` starts as a copy of the params.

  The init is jitted once per model (independent of the mesh), then the
  state is placed with `sharding` (a pytree-prefix of NamedShardings).
  """
  def init(key):
    init_key, rng = jax.random.split(key)
    params, batch_stats = init_variables(model, init_key, input_shape)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=rng,
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None)
  state = jax.jit(init)(key)
  return state if sharding is None else jax.device_put(state, sharding)
