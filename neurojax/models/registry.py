"""Models by name. A model is a Flax Linen module called as `model(x, train=...)`."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

_MODELS: dict[str, Callable[..., nn.Module]] = {}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str):
  """Decorator: registers a module class or factory under `name`."""
  def wrap(factory):
    if name in _MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = factory
    return factory
  return wrap


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Channels that are pruned together: output channel c of `producer` (a
  kernel; channels on its last axis) and index c on `axis` of every leaf in
  `followers` (its norm's scale, bias and running stats, the next conv's
  input axis). Paths are '/'-joined and start with the collection
  ("params/block/conv1/kernel")."""
  producer: str
  followers: tuple[tuple[str, int], ...] = ()


def channel_groups(name: str, model: nn.Module) -> list[ChannelGroup]:
  """The structurally prunable channels of `model` (built as model `name`)."""
  groups = getattr(_MODELS[name], "channel_groups", None)
  if groups is None:
    with_groups = [n for n in names() if hasattr(_MODELS[n], "channel_groups")]
    raise ValueError(f"model {name!r} declares no prunable channel groups, so structured "
                     f"(channel) pruning cannot slim it; models that do: {', '.join(with_groups)}")
  return groups(model)


def width_option(name: str) -> str:
  """The option that sets the per-group widths of a slimmed model `name`."""
  return _MODELS[name].width_option


def is_backbone(name: str) -> bool:
  """Whether model `name` built with num_classes=0 returns pooled features."""
  return getattr(_MODELS.get(name), "backbone", False)


def names() -> list[str]:
  return sorted(_MODELS)


def default_options(name: str) -> dict:
  """The keyword arguments model `name` accepts (besides num_classes and
  dtype), with their defaults: the fields of `config.model` besides `name`."""
  params = inspect.signature(_MODELS[name]).parameters
  return {k: p.default for k, p in params.items()
          if k not in ("num_classes", "dtype", "parent", "name")}


def options(name: str) -> list[str]:
  return sorted(default_options(name))


def get_model(name: str, *, num_classes: int, dtype: str = "float32", **kwargs) -> nn.Module:
  """Builds model `name`; errors name the valid models and options."""
  if name not in _MODELS:
    raise ValueError(f"config.model.name={name!r} is not a known model; "
                     f"choose one of: {', '.join(names())}")
  if dtype not in DTYPES:
    raise ValueError(f"config.compute_dtype={dtype!r} is not one of {', '.join(DTYPES)}")
  valid = options(name)
  for key in kwargs:
    if key not in valid:
      raise ValueError(f"config.model.{key} is not an option of model {name!r}; "
                       f"its options are: {', '.join(valid) or '(none)'}")
  return _MODELS[name](num_classes=num_classes, dtype=DTYPES[dtype], **kwargs)
