"""Neural Rejuvenation's split network (Qiao et al., CVPR 2019).

After the surgery (`methods.rejuvenation`) every changeable layer's
channels are [old | new]: the survivors first, then the new channels (an
input that concatenates several layers' outputs, a DenseNet's, is [old |
new] per layer: its old channels are a list of ranges). A conv
whose input and output both have new channels splits into four blocks
(rows: outputs, columns: inputs):

    ll: old -> old    lr: new -> old
    rl: old -> new    rr: new -> new

- Cross-attention off (the original's CIFAR script): the old and new
  sub-networks stay separate, `out = [ll(x_old), rr(x_new)]`. Here the
  kernel is multiplied by its block-diagonal mask, so lr and rl are 0 and
  get no gradient (they stay exactly 0) and each such conv is one conv.
- Cross-attention on (its ImageNet default): `old = ll + lr * 2 sigmoid(ll)`,
  `new = rr + rl * 2 sigmoid(rr)` (two convs, one over the old inputs, one
  over the new; a conv bias is in both, as in the original's _AttConv2d).
- The classifier gives z_old (the new channels zeroed) and z_new (the old
  zeroed), each with the bias, for the loss CE(z_old) + CE(z_new); the
  prediction is z_old + z_new - bias, the classifier on all channels with
  its bias once (the original adds it twice).

`Rejuvenated` wraps the widened model and keeps its parameter paths (it is
not a Linen module; it intercepts the split modules' calls), so the
checkpoint, channel groups and stats of the base model apply unchanged.
Its output is [batch, 3, classes]: z_old, z_new and the prediction.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

OLD, NEW, PREDICTION = 0, 1, 2


def old_mask(old, size: int) -> np.ndarray:
  """bool [size]: the old channels, given as a count (the first `old`) or
  as [start, stop) ranges."""
  mask = np.zeros(size, bool)
  for start, stop in ([(0, old)] if isinstance(old, (int, np.integer)) else old):
    mask[int(start):int(stop)] = True
  return mask


def block_mask(kernel_shape, old_in, old_out: int):
  """bool [kh, kw, in, out]: True on the old->old and new->new blocks."""
  *_, n_in, n_out = kernel_shape
  inp = jnp.asarray(old_mask(old_in, n_in))
  out = jnp.arange(n_out) < old_out
  return jnp.broadcast_to(inp[:, None] == out[None, :], kernel_shape)


def _split(x, old):
  """x with the new channels zeroed, and x with the old ones zeroed."""
  is_old = jnp.asarray(old_mask(old, x.shape[-1]))
  zero = jnp.zeros((), x.dtype)
  return jnp.where(is_old, x, zero), jnp.where(is_old, zero, x)


def _on_both(call, x, old, kwargs):
  """`call` on x's old channels alone and on its new ones alone, in one call
  (the two stacked on the batch axis: a module may run once per call)."""
  y = call(jnp.concatenate(_split(x, old), axis=0), **kwargs)
  return y[:x.shape[0]], y[x.shape[0]:]


def cross_attention(y_old_in, y_new_in, old_out: int):
  """The outputs of a split conv with cross-attention, from its outputs on
  the old inputs alone (ll | rl) and on the new ones alone (lr | rr)."""
  ll, rl = y_old_in[..., :old_out], y_old_in[..., old_out:]
  lr, rr = y_new_in[..., :old_out], y_new_in[..., old_out:]
  return jnp.concatenate([ll + lr * 2 * jax.nn.sigmoid(ll),
                          rr + rl * 2 * jax.nn.sigmoid(rr)], axis=-1)


def _ranges(old):
  return old if isinstance(old, (int, np.integer)) else tuple((int(a), int(b)) for a, b in old)


class Rejuvenated:
  """`base` (the widened model) split into old and new channels.

  `splits`: (module path, old inputs, old outputs) of each conv that has new
  inputs and new outputs ('/'-joined module path, e.g. "conv3" or
  "layer1_0/conv1"; old inputs a count or [start, stop) ranges, see
  `old_mask`). `head`: (module path, old inputs) of the classifier.
  """

  def __init__(self, base, splits=(), head=("fc", 0), cross_attention: bool = False):
    self.base = base
    self.splits = {tuple(p.split("/")): (_ranges(i), int(o)) for p, i, o in splits}
    self.head = (tuple(head[0].split("/")), _ranges(head[1]))
    self.cross_attention = bool(cross_attention)

  def __getattr__(self, name):         # rng_streams, dtype, ... are the base model's
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  def init(self, rngs, *args, **kwargs):
    return self.base.init(rngs, *args, **kwargs)

  def _masked(self, variables):
    """The variables with the cross blocks of every split kernel zeroed."""
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    for path, (old_in, old_out) in self.splits.items():
      kernel = flat[path + ("kernel",)]
      flat[path + ("kernel",)] = jnp.where(block_mask(kernel.shape, old_in, old_out), kernel,
                                           jnp.zeros((), kernel.dtype))
    return dict(variables, params=traverse_util.unflatten_dict(flat))

  def _intercept(self, next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    if path == self.head[0]:
      z_old, z_new = _on_both(next_fun, args[0], self.head[1], kwargs)
      bias = context.module.variables["params"].get("bias")
      z = z_old + z_new - (bias.astype(z_old.dtype) if bias is not None else 0)
      return jnp.stack([z_old, z_new, z], axis=1)
    if self.cross_attention and path in self.splits:
      old_in, old_out = self.splits[path]
      return cross_attention(*_on_both(next_fun, args[0], old_in, kwargs), old_out)
    return next_fun(*args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    if not self.cross_attention:
      variables = self._masked(variables)
    with nn.intercept_methods(self._intercept):
      return self.base.apply(variables, *args, **kwargs)
