"""Initialisers and small layers shared by the models.

PyTorch's default init for a bare `nn.Linear`/`nn.Conv` is
kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
kernel, and the same bound for the bias.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from neurojax.nn import fastpath

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def torch_dense(x, features: int, dtype, name=None, kernel_init=torch_kernel_init):
  """nn.Linear with PyTorch's default init (or another `kernel_init`; the
  bias keeps PyTorch's), applied to `x`."""
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init,
                  bias_init=torch_bias_init(x.shape[-1]), name=name)(x)


def torch_conv(x, features: int, kernel: int, dtype, stride: int = 1, padding: int = 0,
               name=None):
  """nn.Conv2d (with bias) with PyTorch's default init and symmetric padding."""
  fan_in = x.shape[-1] * kernel * kernel
  return nn.Conv(features, (kernel, kernel), strides=stride,
                 padding=[(padding, padding)] * 2, dtype=dtype,
                 kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in),
                 name=name)(x)


def conv(x, features: int, kernel: int, dtype, stride: int = 1, padding: int = 0,
         use_bias: bool = False, name=None, kernel_init=kaiming_normal_fan_out):
  """nn.Conv2d with PyTorch's symmetric `padding`, written out, and
  kaiming_normal(fan_out) (N(0, 2 / (k * k * out))); a bias starts at 0."""
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=[(padding, padding)] * 2,
                 use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=name)(x)


def pooled_classifier(x, num_classes: int, dtype, name="fc"):
  """Global average pool, then a Linear drawn N(0, 0.01) with bias 0 (the
  VGG/DenseNet inits); num_classes=0 returns the pooled features (a backbone)."""
  x = jnp.mean(x, axis=(1, 2))
  if not num_classes:
    return x
  return nn.Dense(num_classes, dtype=dtype, kernel_init=nn.initializers.normal(0.01),
                  name=name)(x)


def batch_norm(train: bool, dtype, name=None, scale_init=nn.initializers.ones):
  """BatchNorm with PyTorch's momentum (0.1 -> 0.9 here) and epsilon
  (`fastpath.BatchNorm`: flax's, with a one-pass gradient on the CPU)."""
  return fastpath.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            dtype=dtype, scale_init=scale_init, name=name)


class DropPath(nn.Module):
  """Stochastic depth (Huang et al. 2016): per example, keep the whole input
  with probability 1 - rate and scale it by 1 / (1 - rate), else zero it.

  Draws from the "dropout" RNG stream; the identity when not training or
  when rate is 0.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not train or self.rate == 0.0:
      return x
    if not 0.0 < self.rate < 1.0:
      raise ValueError(f"DropPath rate={self.rate} must be in [0, 1)")
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
