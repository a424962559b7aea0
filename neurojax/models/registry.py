"""Models by name. A model is a Flax Linen module called as `model(x, train=...)`."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INTERNAL: set[str] = set()      # built from a spec only, not chosen by config.model.name

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(name: str, internal: bool = False):
  """Decorator: registers a module class or factory under `name`;
  `internal` ones (e.g. a head on a backbone) are built from a spec only."""
  def wrap(factory):
    if name in _MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = factory
    if internal:
      _INTERNAL.add(name)
    return factory
  return wrap


def spec(name: str, *, num_classes: int, dtype: str = "float32", **options) -> dict:
  """A model spec: everything that rebuilds the model (`build(spec)`), as
  JSON. Checkpoints store it, so a run rebuilds from its workdir alone."""
  return {"name": name, "num_classes": int(num_classes), "dtype": dtype,
          "options": _jsonable(options)}


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return value


def _from_json(value):
  """Lists back to tuples (model options are hashable); specs stay dicts."""
  if isinstance(value, list):
    return tuple(_from_json(v) for v in value)
  return value


def build(model_spec: dict) -> nn.Module:
  """The model of a `spec(...)` (e.g. `meta["model"]` of a checkpoint)."""
  options = {k: _from_json(v) for k, v in model_spec.get("options", {}).items()}
  return get_model(model_spec["name"], num_classes=model_spec["num_classes"],
                   dtype=model_spec.get("dtype", "float32"), **options)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Channels that are pruned together: output channel c of `producer` (a
  kernel; channels on its last axis) and index c on `axis` of every leaf in
  `followers` (its norm's scale, bias and running stats, the next conv's
  input axis). Paths are '/'-joined and start with the collection
  ("params/block/conv1/kernel").

  `concat_readers` are (path, axis, offset): leaves whose `axis` holds the
  group's channels at [offset, offset + width) among other groups' (the
  readers of a concatenation: a DenseNet's later layers). Only the surgery
  of Neural Rejuvenation reads them; the groups that pruning gets
  (`channel_groups`) have none."""
  producer: str
  followers: tuple[tuple[str, int], ...] = ()
  fixed: bool = False     # never pruned or found dead (a residual stream: `stream_groups`)
  concat_readers: tuple[tuple[str, int, int], ...] = ()


def channel_groups(name: str, model: nn.Module) -> list[ChannelGroup]:
  """The structurally prunable channels of `model` (built as model `name`)."""
  groups = getattr(_MODELS[name], "channel_groups", None)
  if groups is None:
    with_groups = [n for n in names() if hasattr(_MODELS[n], "channel_groups")]
    raise ValueError(f"model {name!r} declares no prunable channel groups, so structured "
                     f"(channel) pruning cannot slim it; models that do: {', '.join(with_groups)}")
  return groups(model)


def all_channel_groups(name: str, model: nn.Module) -> list[ChannelGroup]:
  """The prunable channel groups, then the ones a model declares for
  surgery that widens every layer (`stream_groups`: a ResNet's residual
  stream, fixed; a DenseNet's concatenated features, at offsets)."""
  streams = getattr(_MODELS[name], "stream_groups", None)
  return channel_groups(name, model) + (streams(model) if streams else [])


def group_width_options(name: str, model: nn.Module, groups, widths) -> dict:
  """The model options that give `groups` (`all_channel_groups`) `widths`."""
  mapping = getattr(_MODELS[name], "nr_options", None)
  if mapping is not None:
    return mapping(model, groups, widths)
  if any(g.fixed for g in groups):
    raise ValueError(f"model {name!r} declares fixed channel groups but no nr_options")
  return {width_option(name): tuple(widths)}


@dataclasses.dataclass(frozen=True)
class Stages:
  """A model's stages, for the policies that act by depth (sparsity.policies
  `ke`, `llf`, `layerwise`). `modules` is (stage name, regex) per stage, in
  order: stage 0 is the stem, 1 .. S (`num_stages`) the body stages and
  S + 1 (`head`) the classifier. A param is in the stage whose regex fully
  matches its top-level module, the first part of its '/'-joined path in the
  `params` collection ("layer3_1" of "layer3_1/conv2/kernel"). Called on a
  path, it returns that stage index; a path in no stage is a ValueError."""
  modules: tuple[tuple[str, str], ...]
  model: str = ""                   # the registry name, filled in by `stages(name)`

  def __post_init__(self):
    if len(self.modules) < 2:
      raise ValueError(f"Stages needs at least a stem and a head, got {self.modules!r}")

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.modules)

  @property
  def num_stages(self) -> int:
    """S, the body stages (the stem and the head not counted)."""
    return len(self.modules) - 2

  @property
  def head(self) -> int:
    return len(self.modules) - 1

  def __call__(self, path: str) -> int:
    top = path.split("/")[0]
    for k, (_, pattern) in enumerate(self.modules):
      if re.fullmatch(pattern, top):
        return k
    raise ValueError(f"param {path!r} is in no stage that model {self.model or '(unnamed)'} "
                     f"declares: {', '.join(f'{n}={p!r}' for n, p in self.modules)}")


def stages(name: str) -> Stages:
  """The stem, body stages and head that model `name` declares."""
  if name not in _MODELS:
    raise ValueError(f"config.model.name={name!r} is not a known model; "
                     f"choose one of: {', '.join(names())}")
  declared = getattr(_MODELS[name], "stages", None)
  if declared is None:
    with_stages = [n for n in names() if hasattr(_MODELS[n], "stages")]
    raise ValueError(f"model {name!r} declares no stages (stem, body stages, head: a "
                     f"`stages` attribute on its registered factory), so it has no depth to "
                     f"reset by; models that do: {', '.join(with_stages)}")
  return dataclasses.replace(declared, model=name)


def width_option(name: str) -> str:
  """The option that sets the per-group widths of a slimmed model `name`."""
  return _MODELS[name].width_option


def is_backbone(name: str) -> bool:
  """Whether model `name` built with num_classes=0 returns pooled features."""
  return getattr(_MODELS.get(name), "backbone", False)


def names() -> list[str]:
  return sorted(n for n in _MODELS if n not in _INTERNAL)


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
