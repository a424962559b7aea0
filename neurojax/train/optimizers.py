"""Optimizers from config, with weight decay done the optax way.

For SGD, decay is coupled L2 as in PyTorch (`grad += wd * w` before
momentum): `add_decayed_weights` then `sgd`. For AdamW it is decoupled.
`weight_decay_exclude` is a regex on the '/'-joined param path (e.g.
`bias|scale` to spare biases and norm scales); '' decays everything, as
PyTorch's default does. `freeze` is a regex too: the params it matches are
never updated (no gradient step, no decay, no optimizer state), e.g.
`^backbone/` to train only a head on a frozen backbone. `lr_groups` is a
tuple of (regex, multiplier) pairs: the params whose path matches a pair's
regex (the first pair that matches) get that multiple of the schedule's lr,
e.g. `(("quadratic|ln_hw", 10.0),)` for Dit's 10x on the quadratic term.
`grad_accum_steps` k > 1 accumulates (averages) the gradients of k
consecutive steps and updates once (optax.MultiSteps): an effective batch of
k * batch_size. The schedule stays in steps; update u uses its value at
step u * k.
"""

from __future__ import annotations

import re

import jax
import optax

from neurojax.tree import path_str

OPTIMIZERS = ("sgd", "adam", "adamw")


class OptimizerConfigError(ValueError):
  """A `config.optimizer` regex that matches no parameter of the model."""


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


def _examples(params, n: int = 4) -> list[str]:
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return paths[:n] + (["..."] if len(paths) > n else [])


def param_groups(params, freeze: str = "", lr_groups=()):
  """A label per param: "frozen" (matches `freeze`), "lr<i>" (the first
  `lr_groups` pair whose regex matches) or "base". Raises ValueError naming
  the field when a regex matches no parameter."""
  frozen = _matches(freeze)(params) if freeze else jax.tree.map(lambda _: False, params)
  if freeze and not any(jax.tree.leaves(frozen)):
    raise OptimizerConfigError(f"config.optimizer.freeze={freeze!r} matches no parameter")
  labels = jax.tree.map(lambda f: "frozen" if f else "base", frozen)
  for i, (pattern, _) in enumerate(lr_groups):
    hit = _matches(pattern)(params)
    if not any(jax.tree.leaves(hit)):
      raise OptimizerConfigError(f"config.optimizer.lr_groups[{i}]: {pattern!r} matches no "
                                 f"parameter; the params are named like "
                                 f"{', '.join(_examples(params))}")
    labels = jax.tree.map(lambda l, h, i=i: f"lr{i}" if h and l == "base" else l, labels, hit)
  return labels


def make_optimizer(cfg, schedule, params) -> optax.GradientTransformation:
  """`cfg` is `config.optimizer` (name, momentum, nesterov, weight_decay,
  freeze, lr_groups, ...).

  Frozen params get zero updates and no optimizer state; each lr group gets
  its own optimizer on `multiplier * schedule` (weight decay as usual, so
  AdamW's decoupled decay scales with the group's lr, as a PyTorch param
  group's does). The result is wrapped in `sparsity.masked`, so a train
  state with masks keeps its pruned weights and their moments at exactly
  zero.
  """
  from neurojax.sparsity.transform import masked  # pylint: disable=g-import-not-at-top
  accum = int(cfg.get("grad_accum_steps", 1))
  lr = schedule if callable(schedule) else optax.constant_schedule(schedule)
  if accum > 1:
    lr = lambda update, step_lr=lr: step_lr(update * accum)
  lr_groups = tuple(cfg.get("lr_groups", ()))
  if not cfg.freeze and not lr_groups:
    tx = _make_optimizer(cfg, lr, params)
  else:
    labels = param_groups(params, cfg.freeze, lr_groups)
    used = set(jax.tree.leaves(labels))
    txs = {"base": _make_optimizer(cfg, lr, params), "frozen": optax.set_to_zero()}
    for i, (_, multiplier) in enumerate(lr_groups):
      txs[f"lr{i}"] = _make_optimizer(cfg, lambda s, m=float(multiplier): m * lr(s), params)
    tx = optax.multi_transform({k: v for k, v in txs.items() if k in used}, labels)
  if accum > 1:
    tx = optax.MultiSteps(tx, accum).gradient_transformation()
  return masked(tx)


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
