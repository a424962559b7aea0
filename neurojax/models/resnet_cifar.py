"""CIFAR-style ResNets (He et al. 2016, section 4.2): 6n+2 layers.

A 3x3 conv with 16 channels, three stages of n BasicBlocks (16, 32, 64
channels; stride 2 at the start of stages 2 and 3), global average pooling
and a linear classifier (none with num_classes=0: the pooled features). Shortcuts are option A (identity; when the shape
changes, subsample by 2 and zero-pad the new channels), as in the paper.
BN running statistics live in the `batch_stats` collection, which the train
state carries. Convs have no bias and use kaiming_normal(fan_in).

Two variants (`variant`): "he" is the paper's (option-A shortcuts, global
average pooling, a 64-d head); "dit_code" is the Dit code's (option-B
shortcuts: 1x1 conv + BN where the shape changes; avg_pool(4) flattened,
256-d at 32 px). dit_resnet<depth> (Dit-CNN, NeurIPS 2024) changes only the
first block of stage 2: out = (bn2(conv2(h)) + Q(LN_hw(h))) / 2 with
h = relu(bn1(conv1(x))), then relu(out + shortcut(x)); Q is
`nn.quadratic.Quadratic` and LN_hw the spatial LayerNorm (+33,280 params at
32 px, any depth).

`block_widths` (one per block, in order) sets the inner width of each block
(conv1's outputs, conv2's inputs): a slimmed model after structured
pruning. `channel_groups` declares those channels for the pruner.
`STAGES` (the generation policies' depth): the stem (conv1, bn1) is stage 0,
stage1..3 (`stageK_blockB`) are stages 1-3, fc is the head (4).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import batch_norm, kaiming_normal_fan_in, torch_dense
from neurojax.models.registry import ChannelGroup, Stages, register
from neurojax.nn import fastpath
from neurojax.nn.quadratic import Quadratic, SpatialLayerNorm


def conv3x3(features: int, stride: int, dtype, name=None):
  return nn.Conv(features, (3, 3), strides=stride, padding=[(1, 1), (1, 1)],
                 use_bias=False, dtype=dtype, kernel_init=kaiming_normal_fan_in, name=name)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  inner: int | None = None          # conv1's output width; default `features`
  shortcut: str = "A"               # A: subsample + zero-pad; B: 1x1 conv + BN
  dit: bool = False                 # out = (bn2(conv2(h)) + Q(LN_hw(h))) / 2

  @nn.compact
  def __call__(self, x, train: bool):
    h = conv3x3(self.inner or self.features, self.stride, self.dtype, name="conv1")(x)
    h = nn.relu(batch_norm(train, self.dtype, name="bn1")(h))
    out = conv3x3(self.features, 1, self.dtype, name="conv2")(h)
    out = batch_norm(train, self.dtype, name="bn2")(out)
    if self.dit:
      q = Quadratic(self.features, dtype=self.dtype, name="quadratic")(
          SpatialLayerNorm(dtype=self.dtype, name="ln_hw")(h))
      out = (out + q) / 2
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      if self.shortcut == "B":
        shortcut = nn.Conv(self.features, (1, 1), strides=self.stride, use_bias=False,
                           dtype=self.dtype, kernel_init=kaiming_normal_fan_in,
                           name="downsample_conv")(x)
        shortcut = batch_norm(train, self.dtype, name="downsample_bn")(shortcut)
      else:
        shortcut = x[:, ::self.stride, ::self.stride, :]
        extra = self.features - x.shape[-1]
        shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
  depth: int = 20
  num_classes: int = 10
  width: int = 16
  dtype: Any = jnp.float32
  block_widths: tuple[int, ...] = ()
  variant: str = "he"               # he | dit_code (see the module docstring)
  dit: bool = False                 # the Dit block at the first block of stage 2

  def blocks(self):
    """(name, features, stride) of every block, in order."""
    if (self.depth - 2) % 6:
      raise ValueError(f"config.model.depth={self.depth} must be 6n+2 (20, 32, 44, 56, 110)")
    n = (self.depth - 2) // 6
    return [(f"stage{stage + 1}_block{block}", self.width * 2**stage,
             2 if stage > 0 and block == 0 else 1) for stage in range(3) for block in range(n)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = self.blocks()
    if self.block_widths and len(self.block_widths) != len(blocks):
      raise ValueError(f"config.model.block_widths has {len(self.block_widths)} entries; "
                       f"resnet{self.depth} has {len(blocks)} blocks (or leave it empty)")
    inner = self.block_widths or [None] * len(blocks)
    x = x.astype(self.dtype)
    x = conv3x3(self.width, 1, self.dtype, name="conv1")(x)
    x = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
    shortcut = "B" if self.variant == "dit_code" else "A"
    for (name, features, stride), w in zip(blocks, inner):
      dit = self.dit and name == "stage2_block0"
      x = BasicBlock(features, stride, self.dtype, inner=w, shortcut=shortcut, dit=dit,
                     name=name)(x, train)
    if self.variant == "dit_code":      # avg_pool(4), flattened (256-d at 32 px)
      x = nn.avg_pool(x, (4, 4), strides=(4, 4)).reshape(x.shape[0], -1)
    else:
      x = jnp.mean(x, axis=(1, 2))
    if not self.num_classes:          # a backbone: the pooled features
      return x
    return torch_dense(x, self.num_classes, self.dtype, name="fc")


# XLA's Eigen convs instead of YNNPACK's on CPU: ResNet-20's train step 1.3x
# faster, ResNet-110's 3x (benchmarks/cpu_levers.py; nn.fastpath).
CifarResNet.xla_cpu_options = fastpath.EIGEN_CONVS


def channel_groups(model: CifarResNet) -> list[ChannelGroup]:
  """The prunable channels: the inner channels of each block. (The blocks'
  outputs are summed with the shortcut, so they stay.)"""
  return [ChannelGroup(f"params/{b}/conv1/kernel", (
      (f"params/{b}/bn1/scale", 0), (f"params/{b}/bn1/bias", 0),
      (f"batch_stats/{b}/bn1/mean", 0), (f"batch_stats/{b}/bn1/var", 0),
      (f"params/{b}/conv2/kernel", 2))) for b, _, _ in model.blocks()]


VARIANTS = ("he", "dit_code")
STAGES = Stages((("stem", r"conv1|bn1"),) +
                tuple((f"stage{k}", rf"stage{k}_block\d+") for k in range(1, 4)) + (("fc", "fc"),))


def _cifar_resnet(depth: int, dit: bool = False):
  def factory(num_classes: int = 10, dtype: Any = jnp.float32, width: int = 16,
              block_widths: tuple = (), variant: str = "he"):
    if variant not in VARIANTS:
      raise ValueError(f"config.model.variant={variant!r} is not valid; choose one of: "
                       f"{', '.join(VARIANTS)} (he: option-A shortcuts and global pooling; "
                       "dit_code: the Dit code's option-B shortcuts and avg_pool(4) head)")
    return CifarResNet(depth=depth, num_classes=num_classes, width=width, dtype=dtype,
                       block_widths=tuple(block_widths), variant=variant, dit=dit)
  factory.__annotations__ = {"width": int, "block_widths": tuple, "variant": str}
  if not dit:      # the Dit block's conv1 channels also feed Q and LN_hw: not slimmable
    factory.channel_groups = channel_groups
    factory.width_option = "block_widths"
  factory.backbone = True
  factory.stages = STAGES
  return factory


for _depth in (20, 32, 44, 56, 110):
  register(f"resnet{_depth}")(_cifar_resnet(_depth))
  register(f"dit_resnet{_depth}")(_cifar_resnet(_depth, dit=True))
