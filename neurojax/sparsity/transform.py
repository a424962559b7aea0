"""The optax side: keep pruned weights and their optimizer state at zero.

    tx = masked(optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, 0.9)))
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)

With `masks` (True = keep; None leaves are not masked):
  s      <- s * m  for every params-shaped part of s (momentum, Adam moments)
  g      <- g * m                       (pruned gradients are zero)
  u, s   <- inner(g, s, w)
  u      <- u * m                       (weight decay cannot move them either)
So a pruned weight that is 0 stays exactly 0 under SGD, momentum, weight
decay and Adam, and their moments stay 0 too (they are linear in g and s),
also right after the masks change. Without `masks` it is `inner` unchanged.

The state is masked on the way in, not on the way out: masking the output
made XLA read the old momentum from two fusions, so with a donated state it
copied every momentum buffer each step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from neurojax.sparsity.masks import fill


def _zero_pruned(tree, full_masks):
  return jax.tree.map(lambda m, x: jnp.where(m, x, jnp.zeros_like(x)), full_masks, tree)


def masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so that `update(..., masks=...)` keeps pruned entries at 0."""
  def update(updates, state, params=None, *, masks=None, **extra):
    del extra
    if masks is None:
      return inner.update(updates, state, params)
    full = fill(masks, True)
    state = optax.tree_utils.tree_map_params(
        inner, lambda v, m: jnp.where(m, v, jnp.zeros_like(v)), state, full)
    updates, state = inner.update(_zero_pruned(updates, full), state, params)
    return _zero_pruned(updates, full), state
  return optax.GradientTransformationExtraArgs(inner.init, update)



class L1State(NamedTuple):
  """`with_l1`'s state: the L1 strength (a float32 scalar a method may
  change between steps: `set_l1_strength`) and the inner state."""
  strength: jax.Array
  inner_state: Any


def with_l1(inner: optax.GradientTransformation, strength: float, mask
            ) -> optax.GradientTransformationExtraArgs:
  """An L1 penalty on the params `mask` selects, as a gradient term:

      g <- g + strength * sign(w)    where mask (w = 0: no change)
      u, s <- inner(g, s, w)

  i.e. the subgradient of `strength * sum |w|` added before `inner` (weight
  decay, momentum), as network slimming and Neural Rejuvenation add it to
  the BatchNorm scales. `mask` is a bool pytree shaped like the params (or a
  prefix of it), or a function of the params giving one. The strength lives
  in the state, so changing it (`set_l1_strength`) needs no re-jit; the
  state is `L1State(strength, inner_state)`. Extra arguments (`masks=`)
  go to `inner`."""
  def init(params):
    return L1State(jnp.asarray(strength, jnp.float32), inner.init(params))

  def update(updates, state, params=None, **extra):
    if params is None:
      raise ValueError("with_l1 needs the params: call update(grads, state, params)")
    selected = mask(params) if callable(mask) else mask
    updates = jax.tree.map(
        lambda on, g, w: (g + state.strength * jnp.sign(w)).astype(g.dtype) if on else g,
        selected, updates, params)
    updates, inner_state = _update(inner, updates, state.inner_state, params, **extra)
    return updates, L1State(state.strength, inner_state)
  return optax.GradientTransformationExtraArgs(init, update)


def _update(inner, updates, state, params, **extra):
  if isinstance(inner, optax.GradientTransformationExtraArgs):
    return inner.update(updates, state, params, **extra)
  return inner.update(updates, state, params)


def set_l1_strength(opt_state: L1State, strength) -> L1State:
  """`with_l1`'s state with another strength (same dtype: no re-jit)."""
  return opt_state._replace(strength=jnp.asarray(strength, opt_state.strength.dtype))
