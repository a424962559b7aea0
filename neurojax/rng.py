"""Every random stream of a run, derived from its seed in one place.

A run's keys form a tree (DESIGN.md principle 1):

    seed_key = PRNGKey(config.seed)
    ├── split -> init key (the params) and state.rng (the run's base key)
    │   └── fold_in(state.rng, step) = the key of train step `step`
    │       └── the model's RNG streams: STEP_STREAMS (dropout: the step key
    │           itself, gate: fold_in 1, mix: fold_in 2, sample: fold_in 3)
    ├── fold_in(seed_key, GENERATIONS) -> fold_in(., g): generation g's re-draw
    ├── fold_in(seed_key, EVAL) -> fold_in(., batch): a stochastic eval's keys
    ├── fold_in(seed_key, EVAL_MATRIX) -> fold_in(., batch): Kakuritsu's eval matrix
    └── fold_in(seed_key, REJUVENATION) -> fold_in(., 0) -> fold_in(., leaf): NR's new neurons

Purpose keys derived from `state.rng` itself use salts >= 2**31, which no
step number (an int32 >= 0) reaches, so they never equal a step's key.
"""

from __future__ import annotations

import jax

# Salts folded into PRNGKey(seed). The base keys differ from state.rng (a split of it).
GENERATIONS = 7
EVAL = 0x5EED
EVAL_MATRIX = 0x6A7E
REJUVENATION = 0x4E52          # Neural Rejuvenation's new neurons

# Salts folded into state.rng: above every step number.
PRUNE_RANDOM = 2**31 + 1

# The per-step streams a model can declare (its `rng_streams`): the salt
# folded into the step's key, None for the step key itself.
STEP_STREAMS = {"dropout": None, "gate": 1, "mix": 2, "sample": 3}
DEFAULT_STREAMS = ("dropout",)


def seed_key(seed: int) -> jax.Array:
  return jax.random.PRNGKey(seed)


def purpose_key(seed: int, salt: int) -> jax.Array:
  """A key for one purpose of the run (`GENERATIONS`, `EVAL`, ...)."""
  return jax.random.fold_in(seed_key(seed), salt)


def step_key(rng: jax.Array, step) -> jax.Array:
  return jax.random.fold_in(rng, step)


def stream_keys(key: jax.Array, streams) -> dict:
  """{stream: key} for `model.apply(..., rngs=...)`, from a step's key."""
  unknown = [s for s in streams if s not in STEP_STREAMS]
  if unknown:
    raise ValueError(f"unknown RNG stream(s) {unknown}; neurojax.rng.STEP_STREAMS names "
                     f"{', '.join(STEP_STREAMS)} (add a new stream there, with its own salt)")
  return {s: key if STEP_STREAMS[s] is None else jax.random.fold_in(key, STEP_STREAMS[s])
          for s in streams}


def model_streams(model) -> tuple:
  """The RNG streams `model` declares it needs in training (its
  `rng_streams` attribute; plain models need only "dropout")."""
  return tuple(getattr(model, "rng_streams", DEFAULT_STREAMS))
