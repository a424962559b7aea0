"""DenseNet-BC as Neural Rejuvenation builds it (Qiao et al., CVPR 2019; the
NeuralRejuvenation-CVPR19 code's models/cifar/densenet.py and
models/imagenet/densenet.py).

    densenet_bc100  CIFAR (README: `densenet --depth 100 --growthRate 40`):
                    a 3x3 conv 2k (80), three dense blocks of (100 - 4) // 6 = 16
                    layers, a transition (to half the channels) between blocks.
    densenet121     ImageNet (`densenet121_nr`): a 7x7/2 conv 64 (pad 3), a 3x3/2
                    max-pool (pad 1), dense blocks of 6, 12, 24, 16 layers (k = 32),
                    a transition after each block but the last.

A dense layer is conv1 1x1 (4k outputs) and conv2 3x3 (k outputs, pad 1),
and its input and output are concatenated, input first; a transition is a 1x1
conv then a 2x2/2 average pool. Then a global average pool and the classifier
(`fc`, num_classes=0: none, the pooled features).

Unlike the DenseNet paper and torchvision (BN-ReLU-conv, a final BN), every
conv in the NR code is followed by its own BN and ReLU (post-activation, no
final BN): the conv and classifier shapes are torchvision's densenet121's
(7,895,208 params), the BNs differ (20,480 params here, torchvision's 83,648).
The NR classifier is a 1x1 conv on the last map, averaged by the training
script; it commutes with the average, so here it is a Dense after the pool.
Init as the original: conv kernels kaiming_normal fan_out (N(0, 2/(k*k*out))),
BN scale 1, bias 0; the classifier N(0, 0.01), bias 0.

Widths: `growth_rate` (k), `stem_width` (0: 2k), `bottleneck_widths` (each
layer's conv1 outputs; default 4k), `growth_widths` (each layer's conv2
outputs; default k) and `transition_widths` (default half the inputs),
all in order. No conv is fixed in NR: every one may change width. Only the
conv1 channels (its BN and conv2's inputs) are `channel_groups`, the ones
pruning slims: the stem's, conv2's and the transitions' outputs reach every
later layer of the block (and the next transition or fc) through the
concatenation, at an offset in their inputs. `stream_groups` declares those
too, with their offsets (`ChannelGroup.concat_readers`), for Neural
Rejuvenation's surgery; `nr_options` maps their widths back to the options.
`stages`: conv0/bn0 the stem, block K with the transition after it stage K,
fc the head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import batch_norm, conv, pooled_classifier
from neurojax.models.registry import ChannelGroup, Stages, register


class DenseLayer(nn.Module):
  inner: int
  growth: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    h = conv(x, self.inner, 1, self.dtype, name="conv1")
    h = nn.relu(batch_norm(train, self.dtype, name="bn1")(h))
    h = conv(h, self.growth, 3, self.dtype, padding=1, name="conv2")
    h = nn.relu(batch_norm(train, self.dtype, name="bn2")(h))
    return jnp.concatenate([x, h], axis=-1)


class Transition(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(x, self.features, 1, self.dtype, name="conv")
    x = nn.relu(batch_norm(train, self.dtype, name="bn")(x))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  blocks: tuple[int, ...] = (16, 16, 16)
  growth_rate: int = 40
  stem: str = "cifar"               # cifar: 3x3 conv; imagenet: 7x7/2 conv + 3x3/2 max-pool
  num_classes: int = 10
  stem_width: int = 0               # 0: 2 * growth_rate
  bottleneck_widths: tuple[int, ...] = ()
  growth_widths: tuple[int, ...] = ()
  transition_widths: tuple[int, ...] = ()
  dtype: Any = jnp.float32

  def layers(self) -> list[str]:
    return [f"block{b + 1}_layer{j + 1}" for b, n in enumerate(self.blocks) for j in range(n)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = len(self.layers())
    inner = self.bottleneck_widths or (4 * self.growth_rate,) * n
    growth = self.growth_widths or (self.growth_rate,) * n
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(x, self.stem_width or 2 * self.growth_rate, 7, self.dtype, 2, 3, name="conv0")
    else:
      x = conv(x, self.stem_width or 2 * self.growth_rate, 3, self.dtype, 1, 1, name="conv0")
    x = nn.relu(batch_norm(train, self.dtype, name="bn0")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    i = 0
    for b, count in enumerate(self.blocks):
      for j in range(count):
        x = DenseLayer(inner[i], growth[i], self.dtype, name=f"block{b + 1}_layer{j + 1}")(
            x, train)
        i += 1
      if b < len(self.blocks) - 1:
        width = self.transition_widths[b] if self.transition_widths else x.shape[-1] // 2
        x = Transition(width, self.dtype, name=f"transition{b + 1}")(x, train)
    return pooled_classifier(x, self.num_classes, self.dtype)


def _bn(prefix: str):
  return ((f"params/{prefix}/scale", 0), (f"params/{prefix}/bias", 0),
          (f"batch_stats/{prefix}/mean", 0), (f"batch_stats/{prefix}/var", 0))


def channel_groups(model: DenseNet) -> list[ChannelGroup]:
  """Each dense layer's conv1 channels: its BN and conv2's inputs. (The
  concatenated outputs sit at offsets of later inputs: `stream_groups`.)"""
  return [ChannelGroup(f"params/{n}/conv1/kernel", (*_bn(f"{n}/bn1"),
                                                   (f"params/{n}/conv2/kernel", 2)))
          for n in model.layers()]


def _layout(model: DenseNet):
  """[(producer module, its BN, width, the readers of the concatenation it
  joins as (kernel path, offset))], in data-flow order."""
  n = len(model.layers())
  growth = model.growth_widths or (model.growth_rate,) * n
  entries = [["conv0", "bn0", model.stem_width or 2 * model.growth_rate, []]]
  i = 0
  for b, count in enumerate(model.blocks):
    joined = [entries[-1]]                   # the block's input, then each layer's conv2
    for j in range(count):
      name = f"block{b + 1}_layer{j + 1}"
      offset = 0
      for e in joined:
        e[3].append((f"params/{name}/conv1/kernel", offset))
        offset += e[2]
      entries.append([f"{name}/conv2", f"{name}/bn2", growth[i], []])
      joined.append(entries[-1])
      i += 1
    reader = (f"transition{b + 1}/conv" if b < len(model.blocks) - 1 else "fc")
    width = sum(e[2] for e in joined)
    offset = 0
    for e in joined:
      e[3].append((f"params/{reader}/kernel", offset))
      offset += e[2]
    if b < len(model.blocks) - 1:
      out = model.transition_widths[b] if model.transition_widths else width // 2
      entries.append([f"transition{b + 1}/conv", f"transition{b + 1}/bn", out, []])
  return entries


def stream_groups(model: DenseNet) -> list[ChannelGroup]:
  """The stem's, every conv2's and every transition's output channels (NR
  changes them all): each with its BN, read at an offset by the layers
  after it in its block and by the transition or classifier that ends it."""
  groups = []
  for producer, bn, _, readers in _layout(model):
    concat = tuple((path, 0 if path == "params/fc/kernel" else 2, offset)
                   for path, offset in readers
                   if path != "params/fc/kernel" or model.num_classes)
    groups.append(ChannelGroup(f"params/{producer}/kernel", _bn(bn), concat_readers=concat))
  return groups


def nr_options(model: DenseNet, groups, widths) -> dict:
  """The options that give `groups` (channel_groups + stream_groups) these
  widths."""
  by = {g.producer: int(w) for g, w in zip(groups, widths)}
  layers = model.layers()
  return {"stem_width": by["params/conv0/kernel"],
          "bottleneck_widths": tuple(by[f"params/{n}/conv1/kernel"] for n in layers),
          "growth_widths": tuple(by[f"params/{n}/conv2/kernel"] for n in layers),
          "transition_widths": tuple(by[f"params/transition{b}/conv/kernel"]
                                     for b in range(1, len(model.blocks)))}


def _widths(option: str, widths, count: int, what: str) -> tuple[int, ...]:
  widths = tuple(int(w) for w in widths)
  if widths and (len(widths) != count or min(widths) < 1):
    raise ValueError(f"config.model.{option}={widths} must be {count} widths >= 1, one per "
                     f"{what} (or empty: the standard widths)")
  return widths


def _densenet(blocks: tuple[int, ...], growth_rate: int, stem: str, num_classes: int):
  n = sum(blocks)

  def factory(num_classes: int = num_classes, dtype: Any = jnp.float32,
              growth_rate: int = growth_rate, stem_width: int = 0,
              bottleneck_widths: tuple = (), growth_widths: tuple = (),
              transition_widths: tuple = ()):
    if growth_rate < 1 or stem_width < 0:
      raise ValueError(f"config.model.growth_rate={growth_rate} must be >= 1 and "
                       f"config.model.stem_width={stem_width} >= 0 (0: 2 * growth_rate)")
    return DenseNet(
        blocks=blocks, growth_rate=growth_rate, stem=stem, num_classes=num_classes,
        stem_width=stem_width,
        bottleneck_widths=_widths("bottleneck_widths", bottleneck_widths, n, "dense layer"),
        growth_widths=_widths("growth_widths", growth_widths, n, "dense layer"),
        transition_widths=_widths("transition_widths", transition_widths, len(blocks) - 1,
                                  "transition"),
        dtype=dtype)
  factory.channel_groups = channel_groups
  factory.stream_groups = stream_groups
  factory.nr_options = nr_options
  factory.width_option = "bottleneck_widths"
  factory.backbone = True
  factory.stages = Stages((("stem", r"conv0|bn0"),) + tuple(
      (f"block{k}", rf"block{k}_layer\d+|transition{k}") for k in range(1, len(blocks) + 1))
      + (("fc", "fc"),))
  return factory


register("densenet_bc100")(_densenet((16, 16, 16), 40, "cifar", 10))
register("densenet121")(_densenet((6, 12, 24, 16), 32, "imagenet", 1000))
