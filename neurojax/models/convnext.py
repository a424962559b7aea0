"""ConvNeXt-T/S/B in timm's layout (Liu et al. 2022) and Dit-ConvNeXt.

    stem     4x4/4 conv (with bias), LayerNorm
    stages   depths T (3,3,9,3), S and B (3,3,27,3); widths T and S
             (96,192,384,768), B (128,256,512,1024); before stages 1-3 a
             downsample: LayerNorm, 2x2/2 conv
    block    x + drop_path(gamma * fc2(gelu(fc1(LN(dwconv7x7(x))))))
             (fc1: C -> 4C, exact GELU, layer scale gamma starts at 1e-6)
    head     global average pool, LayerNorm, fc (num_classes=0: no fc; the
             model returns the pooled and normed features, as a backbone)

Every LayerNorm has epsilon 1e-6. The stochastic-depth rate rises linearly
over all blocks from 0 to `drop_path` (the paper's ImageNet recipe: 0.1 for
T, 0.4 for S, 0.5 for B). Conv and dense kernels are trunc_normal(std .02)
truncated at +-2 absolute (timm's bounds, i.e. +-100 std), biases zero.

dit_convnext_* (Dit-CNN, NeurIPS 2024; METHODS.md section 2) changes only
the third block of stage 0: its dwconv output becomes dwconv(x) + Q(x), Q the
zero-initialised `nn.quadratic.Quadratic` on the raw block input (no LN, no
/2). It adds C^3 params: 884,736 for T and S, 2,097,152 for B.

Module names follow timm's state_dict (`stages_1_downsample_conv`,
`stages_0_blocks_2/conv_dw`, `head_fc`); `torchvision_key` maps them to
torchvision's keys, for `neurojax.convert.torchvision` (import and export).

`STAGES` (the generation policies' depth): the stem (stem_conv, stem_norm)
is stage 0; timm's stages_0..3 are stages 1-4, each with the downsample
(LN, 2x2/2 conv) in front of it; the head (5) is head_norm and head_fc.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from neurojax.models.layers import DropPath
from neurojax.models.registry import Stages, register
from neurojax.nn.quadratic import Quadratic

trunc_normal = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)
DIT_BLOCK = (0, 2)                  # (stage, block) that gets the quadratic term
STAGES = Stages((("stem", r"stem_(conv|norm)"),) +
                tuple((f"stages_{s}", rf"stages_{s}_(downsample_(norm|conv)|blocks_\d+)")
                      for s in range(4)) + (("head", r"head_(norm|fc)"),))


def conv(features: int, kernel: int, stride: int, dtype, name: str, groups: int = 1):
  pad = (kernel - stride) // 2        # 3 for the 7x7 dwconv, 0 for the 4x4/4 and 2x2/2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=[(pad, pad)] * 2,
                 feature_group_count=groups, dtype=dtype, kernel_init=trunc_normal, name=name)


def dense(features: int, dtype, name: str):
  return nn.Dense(features, dtype=dtype, kernel_init=trunc_normal, name=name)


def layer_norm(dtype, name: str):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class Block(nn.Module):
  """The ConvNeXt block; with `dit`, Q(x) is added to the dwconv output."""
  drop_path: float = 0.0
  dit: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    h = conv(c, 7, 1, self.dtype, "conv_dw", groups=c)(x)
    if self.dit:
      h = h + Quadratic(c, dtype=self.dtype, name="quadratic")(x)
    h = layer_norm(self.dtype, "norm")(h)
    h = nn.gelu(dense(4 * c, self.dtype, "mlp_fc1")(h), approximate=False)
    h = dense(c, self.dtype, "mlp_fc2")(h)
    gamma = self.param("gamma", nn.initializers.constant(1e-6), (c,))
    return x + DropPath(self.drop_path, name="drop_path")(h * gamma.astype(self.dtype), train)


class ConvNeXt(nn.Module):
  depths: tuple[int, ...] = (3, 3, 9, 3)
  dims: tuple[int, ...] = (96, 192, 384, 768)
  num_classes: int = 1000
  drop_path: float = 0.0              # the last block's stochastic-depth rate
  dit: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    rates = np.linspace(0.0, self.drop_path, sum(self.depths))
    x = conv(self.dims[0], 4, 4, self.dtype, "stem_conv")(x.astype(self.dtype))
    x = layer_norm(self.dtype, "stem_norm")(x)
    i = 0
    for s, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if s > 0:
        x = layer_norm(self.dtype, f"stages_{s}_downsample_norm")(x)
        x = conv(dim, 2, 2, self.dtype, f"stages_{s}_downsample_conv")(x)
      for b in range(depth):
        x = Block(float(rates[i]), self.dit and (s, b) == DIT_BLOCK, self.dtype,
                  name=f"stages_{s}_blocks_{b}")(x, train)
        i += 1
    x = layer_norm(self.dtype, "head_norm")(jnp.mean(x, axis=(1, 2)))
    if not self.num_classes:          # a backbone: the pooled, normed features
      return x
    return dense(self.num_classes, self.dtype, "head_fc")(x)


_BLOCK_LAYERS = {"conv_dw": 0, "norm": 2, "mlp_fc1": 3, "mlp_fc2": 5}   # CNBlock.block.<i>
_TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "layer_scale"}


def torchvision_key(modules: tuple[str, ...], leaf: str) -> str | None:
  """Our param path (module..., leaf) -> its torchvision ConvNeXt state_dict
  key, or None where torchvision has none (a Dit block's quadratic term).
  Both directions of `neurojax.convert.torchvision` use this one mapping."""
  name = _TORCH_LEAVES.get(leaf)
  if name is None or not modules:
    return None
  top, rest = modules[0], modules[1:]
  if top in ("head_norm", "head_fc") and not rest:  # classifier.0 LN, .1 Flatten, .2 Linear
    return f"classifier.{0 if top == 'head_norm' else 2}.{name}"
  if top in ("stem_conv", "stem_norm") and not rest:          # features.0: conv, LN
    return f"features.0.{0 if top == 'stem_conv' else 1}.{name}"
  m = re.fullmatch(r"stages_(\d+)_downsample_(norm|conv)", top)
  if m and not rest:                            # features.2s: stage s's downsample: LN, conv
    return f"features.{2 * int(m[1])}.{0 if m[2] == 'norm' else 1}.{name}"
  m = re.fullmatch(r"stages_(\d+)_blocks_(\d+)", top)
  if m:                                         # features.2s+1.j: stage s's blocks
    block = f"features.{2 * int(m[1]) + 1}.{int(m[2])}"
    if leaf == "gamma" and not rest:
      return f"{block}.{name}"
    if len(rest) == 1 and rest[0] in _BLOCK_LAYERS and leaf != "gamma":
      return f"{block}.block.{_BLOCK_LAYERS[rest[0]]}.{name}"
  return None


_SIZES = {"tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
          "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
          "base": ((3, 3, 27, 3), (128, 256, 512, 1024))}


def _convnext(size: str, dit: bool = False):
  depths, dims = _SIZES[size]

  def factory(num_classes: int = 1000, dtype: Any = jnp.float32, drop_path: float = 0.0):
    if not 0.0 <= drop_path < 1.0:
      raise ValueError(f"config.model.drop_path={drop_path} must be in [0, 1): the last "
                       "block's stochastic-depth rate (the paper's: T 0.1, S 0.4, B 0.5)")
    return ConvNeXt(depths=depths, dims=dims, num_classes=num_classes,
                    drop_path=float(drop_path), dit=dit, dtype=dtype)
  factory.backbone = True
  factory.stages = STAGES
  return factory


for _size in _SIZES:
  register(f"convnext_{_size}")(_convnext(_size))
  register(f"dit_convnext_{_size}")(_convnext(_size, dit=True))
