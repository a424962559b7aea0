"""LeNet-300-100 and Han et al.'s (Caffe) LeNet-5.

Both use PyTorch's default init. Inputs are NHWC images; the MLP flattens.
For the generation policies each layer is a stage: the first is the stem
(stage 0), the last the head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from neurojax.models.layers import torch_conv, torch_dense
from neurojax.models.registry import Stages, register
from neurojax.nn import fastpath


@register("lenet_300_100")
class LeNet300100(nn.Module):
  """784-300-100-10 MLP with ReLU (LeCun et al. 1998; Han et al. 2015)."""
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    x = nn.relu(torch_dense(x, 300, self.dtype, name="fc1"))
    x = nn.relu(torch_dense(x, 100, self.dtype, name="fc2"))
    return torch_dense(x, self.num_classes, self.dtype, name="fc3")


LeNet300100.stages = Stages(tuple((n, n) for n in ("fc1", "fc2", "fc3")))


@register("lenet5")
class LeNet5(nn.Module):
  """Caffe LeNet-5 as pruned by Han et al.: conv 20@5x5, max-pool 2, conv
  50@5x5, max-pool 2, fc 500 + ReLU, fc 10 (431,080 params at 28x28x1).

  Caffe's net has no non-linearity after the convs; `conv_relu=True` adds a
  ReLU after each conv (a common variant).
  """
  num_classes: int = 10
  dtype: Any = jnp.float32
  conv_relu: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = nn.relu if self.conv_relu else (lambda y: y)
    x = x.astype(self.dtype)
    x = act(torch_conv(x, 20, 5, self.dtype, name="conv1"))
    x = fastpath.max_pool(x, (2, 2), (2, 2))
    x = act(torch_conv(x, 50, 5, self.dtype, name="conv2"))
    x = fastpath.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(torch_dense(x, 500, self.dtype, name="fc1"))
    return torch_dense(x, self.num_classes, self.dtype, name="fc2")


# Its 1- and 20-channel 5x5 convs run 1.8x faster on XLA's Eigen kernels
# than on YNNPACK's (the train step; benchmarks/cpu_levers.py).
LeNet5.xla_cpu_options = fastpath.EIGEN_CONVS
LeNet5.stages = Stages(tuple((n, n) for n in ("conv1", "conv2", "fc1", "fc2")))
