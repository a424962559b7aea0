"""Optimizers from config, with weight decay done the optax way.

For SGD, decay is coupled L2 as in PyTorch (`grad += wd * w` before
momentum): `add_decayed_weights` then `sgd`. For AdamW it is decoupled.
`weight_decay_exclude` is a regex on the '/'-joined param path (e.g.
`bias|scale` to spare biases and norm scales); '' decays everything, as
PyTorch's default does. `freeze` is a regex too: the params it matches are
never updated (no gradient step, no decay, no optimizer state), e.g.
`^backbone/` to train only a head on a frozen backbone.
"""

from __future__ import annotations

import re

import jax
import optax

from neurojax.tree import path_str

OPTIMIZERS = ("sgd", "adam", "adamw")


def _matches(pattern: str):
  """params -> a bool tree: True where the param's path matches `pattern`."""
  regex = re.compile(pattern)
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: bool(regex.search(path_str(p))), params)


def decay_mask(params, exclude: str):
  """The params weight decay applies to (a function of the params, so it also
  fits the part of the tree a `freeze` leaves trainable), or None for all."""
  del params
  if not exclude:
    return None
  excluded = _matches(exclude)
  return lambda params: jax.tree.map(lambda x: not x, excluded(params))


def freeze(tx: optax.GradientTransformation, params, pattern: str):
  """`tx` on the params not matching `pattern`; the others get zero updates
  and no optimizer state."""
  frozen = _matches(pattern)(params)
  if not any(jax.tree.leaves(frozen)):
    raise ValueError(f"config.optimizer.freeze={pattern!r} matches no parameter")
  labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(cfg, schedule, params) -> optax.GradientTransformation:
  """`cfg` is `config.optimizer` (name, momentum, nesterov, weight_decay, ...).

  The result is wrapped in `sparsity.masked`, so a train state with masks
  keeps its pruned weights and their moments at exactly zero.
  """
  from neurojax.sparsity.transform import masked  # pylint: disable=g-import-not-at-top
  tx = _make_optimizer(cfg, schedule, params)
  return masked(freeze(tx, params, cfg.freeze) if cfg.freeze else tx)


def _make_optimizer(cfg, schedule, params) -> optax.GradientTransformation:
  mask = decay_mask(params, cfg.weight_decay_exclude)
  if cfg.name == "sgd":
    parts = []
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    return optax.chain(*parts)
  if cfg.name == "adam":
    parts = [optax.add_decayed_weights(cfg.weight_decay, mask)] if cfg.weight_decay else []
    return optax.chain(*parts, optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.name == "adamw":
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=mask)
  raise ValueError(f"config.optimizer.name={cfg.name!r} is not one of {', '.join(OPTIMIZERS)}")
