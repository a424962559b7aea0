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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import (batch_norm, kaiming_normal_fan_in, kaiming_normal_fan_out,
                                    torch_dense, torch_kernel_init)
from neurojax.models.registry import Stages, register

STEMS = ("imagenet", "small")
STAGES = Stages((("stem", r"conv1|bn1"),) +
                tuple((f"layer{k}", rf"layer{k}_\d+") for k in range(1, 5)) + (("fc", "fc"),))
CONV_INITS = {"fan_in": kaiming_normal_fan_in, "fan_out": kaiming_normal_fan_out}
FC_INITS = {"torch_default": torch_kernel_init, "kaiming_normal": kaiming_normal_fan_in}


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

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.width * (4 if self.bottleneck else 1)
    if self.bottleneck:
      shapes = [(self.width, 1, 1), (self.width, 3, self.stride), (out, 1, 1)]
    else:
      shapes = [(self.width, 3, self.stride), (out, 3, 1)]
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

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = CONV_INITS[self.conv_init]
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, 7, 2, self.dtype, init, "conv1")(x)
    else:
      x = conv(self.width, 3, 1, self.dtype, init, "conv1")(x)
    x = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    for stage, blocks in enumerate(self.layers):
      for b in range(blocks):
        x = Block(self.width * 2**stage, 2 if stage > 0 and b == 0 else 1, self.bottleneck,
                  self.dtype, init, name=f"layer{stage + 1}_{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if not self.num_classes:          # a backbone: the pooled features (torchvision's fc=Identity)
      return x
    return torch_dense(x, self.num_classes, self.dtype, name="fc",
                       kernel_init=FC_INITS[self.fc_init])


_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
           101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def _resnet(depth: int):
  layers, bottleneck = _DEPTHS[depth]

  def factory(num_classes: int = 1000, dtype: Any = jnp.float32, stem: str = "imagenet",
              conv_init: str = "fan_in", fc_init: str = "torch_default", width: int = 64):
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
                  conv_init=conv_init, fc_init=fc_init, width=width, dtype=dtype)
  factory.backbone = True
  factory.stages = STAGES
  return factory


for _depth in _DEPTHS:
  register(f"resnet{_depth}")(_resnet(_depth))
