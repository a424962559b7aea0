"""ResNet-18/34/50/101/152 in torchvision's layout (He et al. 2016; v1.5).

    stem     7x7/2 conv 64, BN, ReLU, 3x3/2 max-pool    (stem="imagenet")
             3x3/1 conv 64, BN, ReLU, no pool            (stem="small": 28-32 px images)
    layer1..4  [2,2,2,2] BasicBlocks (18), [3,4,6,3] (34, 50), [3,4,23,3] (101),
               [3,8,36,3] (152); Bottlenecks (expansion 4) from 50 on, with the
               stride on the 3x3 conv (v1.5); widths 64, 128, 256, 512
               (`width` scales them all: width=16 gives 16..128);
               a 1x1 conv + BN shortcut where the shape changes
    global average pool, fc with bias (num_classes=0: no fc; the model returns
    the pooled features, e.g. 2048-d for ResNet-50/152, as a backbone)

Padding is PyTorch's, written out: k//2 on each side, so stride-2 convs and
the max-pool match torchvision exactly (never the asymmetric 'SAME').
Param names follow torchvision's state_dict (`layer1_0/conv1`,
`layer2_0/downsample_conv`, ...). Convs have no bias and use
kaiming_normal(fan_in) (the DNR/KE code; `conv_init="fan_out"` is
torchvision's); BN starts at scale 1, bias 0; the fc uses PyTorch's default
(kernel U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 0.0255 at 512 -> 102), or
with `fc_init="kaiming_normal"` the DNR/KE/LLF code's `Split_ResNet18`
classifier: kernel N(0, 2/fan_in) (std 0.0625 at 512 inputs), bias still
PyTorch's default.
`STAGES` (the generation policies' depth): the stem (conv1, bn1) is stage 0,
layer1..4 are stages 1-4, fc is the head (5).

`block_widths` (one entry per block, in order) sets each block's inner
widths: a BasicBlock's conv1 outputs, a Bottleneck's conv1 and conv2
outputs, so a tuple per block ((w,) or (w1, w2); a BasicBlock's may be a bare
int); a flat tuple with one int per channel group (what structured pruning's
`slim` returns) is read block by block. () keeps the standard widths, and the
params are then exactly as without the option. `channel_groups` declares those
inner channels; the stem, each branch's last conv, the downsample convs and
so the residual stream are not in any group. `stream_widths` (the stem's,
then each stage's output width) sets the residual stream's widths, and
`stream_groups` declares the stream as fixed groups, for Neural
Rejuvenation's surgery, which widens it too.

resnet164 is Neural Rejuvenation's CIFAR ResNet-164 (Qiao et al., CVPR 2019;
the NeuralRejuvenation-CVPR19 code's models/cifar/resnet.py, run as
`resnet --depth 110`: its depth >= 44 takes Bottlenecks, n = (110 - 2) // 6 =
18 per stage, 9n + 2 = 164 layers): this model with the small stem (3x3 conv
16), three stages of 18 Bottlenecks (inner widths 16, 32, 64; outputs 64,
128, 256; post-activation, as above, a 1x1 conv + BN shortcut where the shape
changes, layer1_0 included), kaiming_normal(fan_out) convs, and the code's
classifier: a 1x1 conv (on the last map, averaged by its training script;
here a Dense after the pool, the same function) whose kernel its init loop
also draws N(0, 2 / (1 * 1 * classes)) (kaiming_normal fan_out of the 1x1
conv; std 0.45 at 10 classes), its bias PyTorch's default.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import (batch_norm, kaiming_normal_fan_in, kaiming_normal_fan_out,
                                    torch_dense, torch_kernel_init)
from neurojax.models.registry import ChannelGroup, Stages, register

STEMS = ("imagenet", "small")
STAGES = Stages((("stem", r"conv1|bn1"),) +
                tuple((f"layer{k}", rf"layer{k}_\d+") for k in range(1, 5)) + (("fc", "fc"),))
CONV_INITS = {"fan_in": kaiming_normal_fan_in, "fan_out": kaiming_normal_fan_out}
FC_INITS = {"torch_default": torch_kernel_init, "kaiming_normal": kaiming_normal_fan_in,
            "kaiming_normal_fan_out": kaiming_normal_fan_out}


def conv(features: int, kernel: int, stride: int, dtype, init, name: str):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=[(pad, pad)] * 2,
                 use_bias=False, dtype=dtype, kernel_init=init, name=name)


class Block(nn.Module):
  """BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""
  width: int
  stride: int
  bottleneck: bool
  dtype: Any
  init: Any
  inner: tuple[int, ...] = ()       # conv1's (and a Bottleneck's conv2's) outputs; () = width
  out_width: int = 0                # the block's output (the stream); 0 = width x expansion

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.out_width or self.width * (4 if self.bottleneck else 1)
    w1, w2 = self.inner + (self.width,) * (2 - len(self.inner))
    if self.bottleneck:
      shapes = [(w1, 1, 1), (w2, 3, self.stride), (out, 1, 1)]
    else:
      shapes = [(w1, 3, self.stride), (out, 3, 1)]
    h = x
    for i, (features, kernel, stride) in enumerate(shapes, 1):
      h = conv(features, kernel, stride, self.dtype, self.init, f"conv{i}")(h)
      h = batch_norm(train, self.dtype, name=f"bn{i}")(h)
      if i < len(shapes):
        h = nn.relu(h)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out:
      shortcut = conv(out, 1, self.stride, self.dtype, self.init, "downsample_conv")(x)
      shortcut = batch_norm(train, self.dtype, name="downsample_bn")(shortcut)
    return nn.relu(h + shortcut)


class ResNet(nn.Module):
  layers: tuple[int, ...] = (2, 2, 2, 2)
  bottleneck: bool = False
  num_classes: int = 1000
  stem: str = "imagenet"
  conv_init: str = "fan_in"
  fc_init: str = "torch_default"
  width: int = 64                   # the stem's and layer1's width; later stages double it
  dtype: Any = jnp.float32
  block_widths: tuple[tuple[int, ...], ...] = ()    # per block (see the module docstring)
  stream_widths: tuple[int, ...] = ()   # the stem's and each stage's output; () = standard

  def blocks(self) -> list[tuple[str, int, int]]:
    """(name, width, stride) of every block, in order."""
    return [(f"layer{stage + 1}_{b}", self.width * 2**stage, 2 if stage > 0 and b == 0 else 1)
            for stage, count in enumerate(self.layers) for b in range(count)]

  def streams(self) -> tuple[int, ...]:
    """The residual stream's width after the stem and after each stage."""
    if self.stream_widths:
      return tuple(self.stream_widths)
    expansion = 4 if self.bottleneck else 1
    return (self.width,) + tuple(self.width * 2**s * expansion for s in range(len(self.layers)))

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = CONV_INITS[self.conv_init]
    streams = self.streams()
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(streams[0], 7, 2, self.dtype, init, "conv1")(x)
    else:
      x = conv(streams[0], 3, 1, self.dtype, init, "conv1")(x)
    x = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    blocks = self.blocks()
    for k, (name, width, stride) in enumerate(blocks):
      inner = self.block_widths[k] if self.block_widths else ()
      stage = int(name[len("layer"):].split("_")[0])
      x = Block(width, stride, self.bottleneck, self.dtype, init, inner, streams[stage],
                name=name)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if not self.num_classes:          # a backbone: the pooled features (torchvision's fc=Identity)
      return x
    return torch_dense(x, self.num_classes, self.dtype, name="fc",
                       kernel_init=FC_INITS[self.fc_init])


def channel_groups(model: ResNet) -> list[ChannelGroup]:
  """The inner channels of each block: conv1's (and a Bottleneck's conv2's)
  outputs, with their BN and the next conv's inputs, block by block."""
  groups = []
  for name, _, _ in model.blocks():
    for i in (1, 2) if model.bottleneck else (1,):
      groups.append(ChannelGroup(f"params/{name}/conv{i}/kernel", (
          (f"params/{name}/bn{i}/scale", 0), (f"params/{name}/bn{i}/bias", 0),
          (f"batch_stats/{name}/bn{i}/mean", 0), (f"batch_stats/{name}/bn{i}/var", 0),
          (f"params/{name}/conv{i + 1}/kernel", 2))))
  return groups


def stream_groups(model: ResNet) -> list[ChannelGroup]:
  """The residual stream as fixed channel groups (Neural Rejuvenation widens
  them; nothing prunes them): one per stretch between two downsample convs,
  written by the stem or a downsample conv and every block's last conv (their
  BNs), read by the next blocks' first convs and downsample convs, or the fc."""
  last = "conv3" if model.bottleneck else "conv2"
  streams = model.streams()
  bn = lambda prefix: ((f"params/{prefix}/scale", 0), (f"params/{prefix}/bias", 0),
                       (f"batch_stats/{prefix}/mean", 0), (f"batch_stats/{prefix}/var", 0))
  segments = [["params/conv1/kernel", list(bn("bn1"))]]      # [producer, followers]
  width = streams[0]
  for name, _, stride in model.blocks():
    stage = int(name[len("layer"):].split("_")[0])
    reads = [(f"params/{name}/conv1/kernel", 2)]
    if stride != 1 or width != streams[stage]:       # a downsample: a new stretch starts
      reads.append((f"params/{name}/downsample_conv/kernel", 2))
      segments[-1][1] += reads
      segments.append([f"params/{name}/downsample_conv/kernel",
                       list(bn(f"{name}/downsample_bn"))])
    else:
      segments[-1][1] += reads
    segments[-1][1] += [(f"params/{name}/{last}/kernel", 3), *bn(f"{name}/bn{last[-1]}")]
    width = streams[stage]
  if model.num_classes:
    segments[-1][1].append(("params/fc/kernel", 0))
  return [ChannelGroup(p, tuple(f), fixed=True) for p, f in segments]


def nr_options(model: ResNet, groups, widths) -> dict:
  """The options that give `groups` (channel_groups + stream_groups) these
  widths: block_widths, and stream_widths per stage."""
  inner = [w for g, w in zip(groups, widths) if not g.fixed]
  by_producer = {g.producer: w for g, w in zip(groups, widths) if g.fixed}
  streams, current = [], by_producer["params/conv1/kernel"]
  streams.append(current)
  for stage in range(1, len(model.layers) + 1):
    producer = f"params/layer{stage}_0/downsample_conv/kernel"
    current = by_producer.get(producer, current)
    streams.append(current)
  return {"block_widths": tuple(inner), "stream_widths": tuple(streams)}


def per_block_widths(widths, layers: tuple[int, ...], bottleneck: bool) -> tuple:
  """`block_widths` as one tuple per block (() for the standard widths)."""
  if not widths:
    return ()
  count, per = sum(layers), 2 if bottleneck else 1
  entries = list(widths)
  if len(entries) == count * per and not any(isinstance(w, (tuple, list)) for w in entries):
    entries = [entries[k:k + per] for k in range(0, len(entries), per)]  # one int per group
  entries = [tuple(w) if isinstance(w, (tuple, list)) else (w,) for w in entries]
  if len(entries) != count or any(len(w) != per or min(w) < 1 for w in entries):
    raise ValueError(
        f"config.model.block_widths={tuple(widths)} must give each of the {count} blocks its "
        f"{per} inner width(s) >= 1 ({'(conv1, conv2)' if bottleneck else 'conv1'} outputs), "
        f"or {count * per} ints in a row, or be empty (the standard widths)")
  return tuple(tuple(int(v) for v in w) for w in entries)


_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def _resnet(depth: int):
  layers, bottleneck = _DEPTHS[depth]

  def factory(num_classes: int = 1000, dtype: Any = jnp.float32, stem: str = "imagenet",
              conv_init: str = "fan_in", fc_init: str = "torch_default", width: int = 64,
              block_widths: tuple = (), stream_widths: tuple = ()):
    if width < 1:
      raise ValueError(f"config.model.width={width} must be >= 1 (64 is torchvision's)")
    if stem not in STEMS:
      raise ValueError(f"config.model.stem={stem!r} is not valid; choose one of: "
                       f"{', '.join(STEMS)}")
    if conv_init not in CONV_INITS:
      raise ValueError(f"config.model.conv_init={conv_init!r} is not valid; choose one of: "
                       f"{', '.join(CONV_INITS)}")
    if fc_init not in FC_INITS:
      raise ValueError(f"config.model.fc_init={fc_init!r} is not valid; choose one of: "
                       f"{', '.join(FC_INITS)}")
    return ResNet(layers=layers, bottleneck=bottleneck, num_classes=num_classes, stem=stem,
                  conv_init=conv_init, fc_init=fc_init, width=width, dtype=dtype,
                  block_widths=per_block_widths(block_widths, layers, bottleneck),
                  stream_widths=_streams(stream_widths, layers))
  factory.backbone = True
  factory.stages = STAGES
  factory.channel_groups = channel_groups
  factory.stream_groups = stream_groups
  factory.nr_options = nr_options
  factory.width_option = "block_widths"
  return factory


def _streams(widths, layers) -> tuple:
  widths = tuple(int(w) for w in widths)
  if widths and (len(widths) != len(layers) + 1 or min(widths) < 1):
    raise ValueError(f"config.model.stream_widths={widths} must be {len(layers) + 1} widths "
                     f">= 1 (the stem's, then each stage's output), or empty (the standard)")
  return widths


for _depth in _DEPTHS:
  register(f"resnet{_depth}")(_resnet(_depth))


@register("resnet164")
def resnet164(num_classes: int = 10, dtype: Any = jnp.float32, width: int = 16,
              block_widths: tuple = (), stream_widths: tuple = ()) -> ResNet:
  """Neural Rejuvenation's CIFAR ResNet-164 (see the module docstring)."""
  if width < 1:
    raise ValueError(f"config.model.width={width} must be >= 1 (16 is the original's)")
  layers = (18, 18, 18)
  return ResNet(layers=layers, bottleneck=True, num_classes=num_classes, stem="small",
                conv_init="fan_out", fc_init="kaiming_normal_fan_out", width=width, dtype=dtype,
                block_widths=per_block_widths(block_widths, layers, True),
                stream_widths=_streams(stream_widths, layers))


resnet164.backbone = True
resnet164.stages = Stages((("stem", r"conv1|bn1"),) +
                          tuple((f"layer{k}", rf"layer{k}_\d+") for k in range(1, 4)) +
                          (("fc", "fc"),))
resnet164.channel_groups = channel_groups
resnet164.stream_groups = stream_groups
resnet164.nr_options = nr_options
resnet164.width_option = "block_widths"
