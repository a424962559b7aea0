"""The small PyTorch research repo's CIFAR / Fashion-MNIST zoo (its
deterministic baselines for the Bayesian and pruning models).

    scnn           the classic LeNet of the PyTorch CIFAR tutorial: conv 6@5x5,
                   ReLU, max-pool 2, conv 16@5x5, ReLU, max-pool 2, flatten,
                   fc 120, ReLU, fc 84, ReLU, fc classes. The repo's spec says
                   only "SCNN (conv 6 and 16 channels, fc 120)"; the head here
                   is the tutorial's 120-84-classes. 44,426 params at 28x28x1
                   (flatten 16*4*4), 62,006 at 32x32x3 (16*5*5), 10 classes.
    alexnet_cifar  pytorch-classification's `models/cifar/alexnet.py` (FC layers
                   removed, paddings adjusted): conv 64@11x11/4 pad 5, ReLU,
                   max-pool 2; conv 192@5x5 pad 2, ReLU, max-pool 2; conv
                   384@3x3, 256@3x3, 256@3x3 (pad 1, ReLU each), max-pool 2;
                   flatten (1x1x256 at 32 px), Linear(256, classes).
                   2,472,266 params at 10 classes.
    vgg16_cifar    kuangliu/pytorch-cifar's `VGG('VGG16')`: cfg D, each conv
                   3x3 pad 1 with bias + BN + ReLU, 5 max-pools, AvgPool(1)
                   (a no-op), flatten, Linear(512, classes). 14,728,266 params
                   at 10 classes. It is vgg.py's cfg-driven `VGG` (so it has
                   that module's `widths`, channel groups and stages); its
                   flatten of the 1x1x512 map is that module's spatial mean
                   (the same at 32 px). Its init is vgg.py's (conv kernels
                   kaiming_normal fan_out, BN 1/0, the classifier N(0, 0.01),
                   biases 0), not kuangliu's PyTorch default.

The CIFAR ResNet-18/34 of the same repo (kuangliu's ResNet18/ResNet34) are
`resnet18`/`resnet34` with `stem="small"` (resnet.py): 11,173,962 and
21,282,122 params at 10 classes.

scnn and alexnet_cifar use PyTorch's default init (layers.torch_conv,
torch_dense). Inputs are NHWC; the flatten is NHWC's, so fc1's input rows
are a permutation of PyTorch's (NCHW) ones. Params: `conv1`.., `fc1`.. (scnn),
`conv1`..`conv5`, `fc` (alexnet_cifar). `stages`: each layer a stage, the
first conv the stem and the last Linear the head (as lenet.py's).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import torch_conv, torch_dense
from neurojax.models.registry import Stages, register
from neurojax.models.vgg import _vgg
from neurojax.nn import fastpath


def layer_stages(*names: str) -> Stages:
  """Each named layer a stage: the first the stem, the last the head."""
  return Stages(tuple((n, n) for n in names))


@register("scnn")
class SCNN(nn.Module):
  """The PyTorch CIFAR tutorial's LeNet: conv 6@5x5, conv 16@5x5 (ReLU and
  2x2 max-pool each), fc 120, fc 84 (ReLU), fc num_classes. The original's
  "SCNN (conv 6 and 16 channels, fc 120)" leaves the rest unsaid: this is
  the classic 120-84-classes head."""
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for i, features in enumerate((6, 16), 1):
      x = nn.relu(torch_conv(x, features, 5, self.dtype, name=f"conv{i}"))
      x = fastpath.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(torch_dense(x, 120, self.dtype, name="fc1"))
    x = nn.relu(torch_dense(x, 84, self.dtype, name="fc2"))
    return torch_dense(x, self.num_classes, self.dtype, name="fc3")


SCNN.stages = layer_stages("conv1", "conv2", "fc1", "fc2", "fc3")

# (features, kernel, stride, padding, max-pool 2x2/2 after)
ALEXNET_CIFAR = ((64, 11, 4, 5, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                 (256, 3, 1, 1, False), (256, 3, 1, 1, True))


@register("alexnet_cifar")
class AlexNetCIFAR(nn.Module):
  """pytorch-classification's AlexNet for CIFAR-10 (no FC layers, no BN;
  its docstring: without BN the start lr should be 0.01)."""
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for i, (features, kernel, stride, padding, pool) in enumerate(ALEXNET_CIFAR, 1):
      x = nn.relu(torch_conv(x, features, kernel, self.dtype, stride, padding, name=f"conv{i}"))
      if pool:
        x = fastpath.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return torch_dense(x, self.num_classes, self.dtype, name="fc")


AlexNetCIFAR.stages = layer_stages(*(f"conv{i}" for i in range(1, 6)), "fc")

CFG_D = ((64, 64, "M", 128, 128, "M") + (256,) * 3 + ("M",) + (512,) * 3 + ("M",)
         + (512,) * 3 + ("M",))

register("vgg16_cifar")(_vgg(CFG_D, 10, conv_bias=True, bn_scale=1.0))
