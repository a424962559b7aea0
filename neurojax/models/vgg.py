"""VGGs with BN: Neural Rejuvenation's (Qiao et al., CVPR 2019; the
NeuralRejuvenation-CVPR19 code) and the standard CIFAR VGG-19-BN.

    vgg19_nr  CIFAR, the NR code's `vgg19_bn` (its README's "VGG19 (BN)"):
              3x3 convs 64, 64, 128, 128, M, 256 x4, 512, 512, M, 512 x6
              (16 convs, 2 max-pools 2x2/2), global average pool, classifier.
    vgg16_nr  ImageNet, the NR code's `vgg_nr` (its README's "VGG16 (BN)"):
              a 7x7/2 conv 64 (pad 3), a 3x3 conv 64, a 3x3/2 max-pool (pad 1),
              128 x2, M, 256 x4, M, 512 x4, M, 512 x4 (16 convs), global average
              pool, classifier.
    vgg19_bn  CIFAR, pytorch-classification's VGG-19-BN (the code NR's file
              derives from): cfg E, 64 x2, M, 128 x2, M, 256 x4, M, 512 x4, M,
              512 x4, M (16 convs, 5 max-pools), flattened (1x1x512 at 32 px;
              here the spatial mean, the same there), Linear(512, classes).

Every conv is followed by BN and ReLU; the NR models' convs have no bias,
vgg19_bn's have one. Init as the originals: conv kernels N(0, 2 / (k*k*out))
(kaiming_normal fan_out), conv biases 0; BN scale 0.5 in the NR models (1 in
vgg19_bn), BN bias 0; the classifier N(0, 0.01), bias 0.

Where the NR code differs from a plain description:
- its classifier is a 1x1 conv with bias applied to the last feature map, and
  the training script averages the resulting logit map; a 1x1 conv commutes
  with the average, so here it is a Dense (`fc`, kernel [C, classes]) after
  the global average pool: the same function and the same params.
- `vgg_nr` is not torchvision's VGG-16: it has 16 convs (cfg E with the first
  conv a 7x7/2 and an extra 3x3/2 max-pool) and no FC layers (20.55M params
  at 1000 classes; torchvision's vgg16_bn: 13 convs and three FCs, 138.4M).
  The code's other file, vgg_ori.py, has a `vgg16_nr` (cfg D, FC layers as
  1x1 convs) that the README does not use.
- the NR file's own cfg 'E' lacks pytorch-classification's final 'M' and its
  VGG class no longer takes `features` (its vgg19_bn builds the NR model), so
  the standard model follows pytorch-classification's definition.
- the first conv is `is_input` but not `is_fixed` in NR: its output channels
  are rejuvenated like every other conv's.

Params: `conv1`..`conv16`, `bn1`..`bn16`, `fc` (none with num_classes=0: the
pooled features). `widths` (one per conv, in order) sets each conv's output
width; `channel_groups` declares every conv's output channels (its BN, its
bias if any, the next conv's inputs or fc's inputs): VGG has no fixed layers.
`stages`: the first conv is the stem (0), the convs between two max-pools
(those before the first pool but the stem) a body stage each, fc the head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import batch_norm, conv, pooled_classifier
from neurojax.models.registry import ChannelGroup, Stages, register
from neurojax.nn import fastpath

# Convs (their widths) and max-pools: "M" 2x2/2, "P" 3x3/2 with padding 1.
NR_CIFAR = (64, 64, 128, 128, "M") + (256,) * 4 + (512, 512, "M") + (512,) * 6
NR_IMAGENET = ((64, 64, "P", 128, 128, "M") + (256,) * 4 + ("M",) + (512,) * 4 + ("M",)
               + (512,) * 4)
CFG_E = (64, 64, "M", 128, 128, "M") + (256,) * 4 + ("M",) + (512,) * 4 + ("M",) + (512,) * 4 + ("M",)


def conv_widths(cfg) -> tuple[int, ...]:
  return tuple(v for v in cfg if isinstance(v, int))


class VGG(nn.Module):
  cfg: tuple = NR_CIFAR
  num_classes: int = 10
  widths: tuple[int, ...] = ()      # each conv's output width; () = the cfg's
  stem_kernel: int = 3              # 7: the first conv is 7x7/2 (pad 3)
  conv_bias: bool = False
  bn_scale: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    widths = self.widths or conv_widths(self.cfg)
    x = x.astype(self.dtype)
    i = 0
    for v in self.cfg:
      if v == "M":
        x = fastpath.max_pool(x, (2, 2), strides=(2, 2))
      elif v == "P":
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
      else:
        kernel, stride = (self.stem_kernel, 2) if i == 0 and self.stem_kernel == 7 else (3, 1)
        x = conv(x, widths[i], kernel, self.dtype, stride, kernel // 2, self.conv_bias,
                 name=f"conv{i + 1}")
        x = batch_norm(train, self.dtype, name=f"bn{i + 1}",
                       scale_init=nn.initializers.constant(self.bn_scale))(x)
        x = nn.relu(x)
        i += 1
    return pooled_classifier(x, self.num_classes, self.dtype)


def channel_groups(model: VGG) -> list[ChannelGroup]:
  """Every conv's output channels: its BN (and bias), the next conv's inputs
  (fc's inputs after the last conv)."""
  n = len(conv_widths(model.cfg))
  groups = []
  for i in range(1, n + 1):
    followers = [(f"params/bn{i}/scale", 0), (f"params/bn{i}/bias", 0),
                 (f"batch_stats/bn{i}/mean", 0), (f"batch_stats/bn{i}/var", 0)]
    if model.conv_bias:
      followers.append((f"params/conv{i}/bias", 0))
    if i < n:
      followers.append((f"params/conv{i + 1}/kernel", 2))
    elif model.num_classes:
      followers.append(("params/fc/kernel", 0))
    groups.append(ChannelGroup(f"params/conv{i}/kernel", tuple(followers)))
  return groups


def stages(cfg) -> Stages:
  """conv1 the stem; the convs between two max-pools a stage each; fc the head."""
  segments, current, i = [], [], 0
  for v in cfg + ("M",):
    if isinstance(v, int):
      i += 1
      if i > 1:
        current.append(i)
    elif current:
      segments.append(current)
      current = []
  return Stages((("stem", r"conv1|bn1"),) + tuple(
      (f"stage{k}", rf"(conv|bn)({'|'.join(map(str, s))})")
      for k, s in enumerate(segments, 1)) + (("fc", "fc"),))


def _vgg(cfg, num_classes: int, stem_kernel: int = 3, conv_bias: bool = False,
         bn_scale: float = 0.5):
  n = len(conv_widths(cfg))

  def factory(num_classes: int = num_classes, dtype: Any = jnp.float32, widths: tuple = ()):
    widths = tuple(int(w) for w in widths)
    if widths and (len(widths) != n or min(widths) < 1):
      raise ValueError(f"config.model.widths={widths} must be {n} widths >= 1, one per conv "
                       "(or empty: the standard widths)")
    return VGG(cfg=cfg, num_classes=num_classes, widths=widths, stem_kernel=stem_kernel,
               conv_bias=conv_bias, bn_scale=bn_scale, dtype=dtype)
  factory.channel_groups = channel_groups
  factory.width_option = "widths"
  factory.backbone = True
  factory.stages = stages(cfg)
  return factory


register("vgg19_nr")(_vgg(NR_CIFAR, 10))
register("vgg16_nr")(_vgg(NR_IMAGENET, 1000, stem_kernel=7))
register("vgg19_bn")(_vgg(CFG_E, 10, conv_bias=True, bn_scale=1.0))
