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

