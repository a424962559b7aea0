"""Dendritic quadratic integration (Dit-CNN, NeurIPS 2024; METHODS.md section 2).

Per pixel, on the C-channel vector x:

    q_o(x) = x^T A_o x = sum_{i,j} Q[o, i, j] x_i x_j,    Q: [C_out, C_in, C_in]

Q starts at zero; there is no bias and no linear part.

Memory. Any exact evaluation does C_out * C_in * C_in multiply-adds per
pixel, and the obvious ones hold C_out * C_in (or C_in^2, the outer
product) numbers per pixel at once: 3.7 GB at ConvNeXt-T stage 0 (C=96,
56x56, batch 32). `quadratic` instead takes a block of pixels at a time
(`lax.map`): z = x @ Q (contracting j), then q = sum_i z_oi x_i, with at most
`max_elements` entries of z alive. Each block is rematerialised in the
backward pass (`jax.checkpoint`), so the saved residuals are x itself, not
z. The block size changes memory, never the result.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_ELEMENTS = 1 << 22        # entries of the [pixels, C_out, C_in] intermediate at once


def quadratic(x, q, max_elements: int = MAX_ELEMENTS):
  """sum_{i,j} q[o, i, j] x[..., i] x[..., j] for x: [..., C_in], q: [C_out, C_in, C_in]."""
  lead, c_in = x.shape[:-1], x.shape[-1]
  c_out = q.shape[0]
  pixels = x.reshape(-1, c_in)
  n = pixels.shape[0]
  block = max(1, min(n, max_elements // max(c_out * c_in, 1)))
  blocks = math.ceil(n / block)
  pixels = jnp.pad(pixels, ((0, blocks * block - n), (0, 0))).reshape(blocks, block, c_in)
  q_j = q.transpose(2, 0, 1).reshape(c_in, c_out * c_in)          # [j, (o, i)]

  @jax.checkpoint
  def one_block(xb):                                               # [block, C_in]
    z = (xb @ q_j).reshape(-1, c_out, c_in)                        # sum_j q[o, i, j] x_j
    return jnp.einsum("poi,pi->po", z, xb)

  y = jax.lax.map(one_block, pixels).reshape(blocks * block, c_out)[:n]
  return y.reshape(*lead, c_out)


def quadratic_naive(x, q):
  """The same through the [..., C_in * C_in] outer product (for comparison)."""
  outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], -1)
  return outer @ q.reshape(q.shape[0], -1).T


class Quadratic(nn.Module):
  """q_o(x) = x^T A_o x per position, Q: [features, C_in, C_in], zero-initialised."""
  features: int
  max_elements: int = MAX_ELEMENTS
  dtype: Any = jnp.float32
  q_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    q = self.param("q", self.q_init, (self.features, c_in, c_in))
    return quadratic(x.astype(self.dtype), q.astype(self.dtype), self.max_elements)


class SpatialLayerNorm(nn.Module):
  """LayerNorm over (H, W) of each sample and channel, with an [H, W]
  elementwise affine (the original's `LN_hw`; PyTorch's epsilon 1e-5)."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):                                           # [B, H, W, C]
    h, w = x.shape[1:3]
    scale = self.param("scale", nn.initializers.ones, (h, w))
    bias = self.param("bias", nn.initializers.zeros, (h, w))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(1, 2), keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale[None, :, :, None] + bias[None, :, :, None]).astype(self.dtype)
