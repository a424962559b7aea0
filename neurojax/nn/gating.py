"""Stochastic dendritic gating (myKakuritsu; METHODS.md section 1).

A bias-free linear layer whose synapses are kept independently per sample
with keep-probability p, with no 1/p rescaling:

    y[b, j] = sum_i m[b, i, j] * W[i, j] * x[b, i],    m ~ Bernoulli(p)

and the straight-through gradient of the plain layer x @ W (the mask is
ignored by the backward pass).

Sampling, exactly and in bounded memory. The mask of column j (all samples,
all inputs) is drawn from its own key, `fold_in(key, j)`, as a [B, in]
Bernoulli array (`column_mask`): when p is a multiple of 1/2^m for m in
1, 2, 4, 8 (p=0.5: m=1), each gate reads m random bits of a uint32 word and
is kept if they encode a value below p * 2^m. That is exact, and draws
32/m gates per random word (36x faster than one uniform float per gate on
this CPU at p=0.5); any other p compares one uniform float per gate. The output is computed a block of columns at a time
(`lax.map`), so at most `max_elements` mask entries (and their random bits
and products) exist at once: batch 64 with a 2048 -> 1000 head makes blocks
of 32 columns (4.2M entries; at p=0.5 the compiled forward+backward of the
K head needs 25 MiB of scratch on XLA:CPU) instead of one [64, 2048, 1000]
float mask (524 MB). The draws do not depend on the block
size, so changing `max_elements` changes memory, never results. Randomness
comes from the Flax RNG stream "gate".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_ELEMENTS = 1 << 22       # mask entries sampled at once, per block of columns


def _bits_per_gate(p: float) -> int:
  """The smallest m in (1, 2, 4, 8) with p * 2^m an integer, or 0."""
  for m in (1, 2, 4, 8):
    if float(p * 2**m).is_integer():
      return m
  return 0


def column_mask(key, p: float, shape: tuple[int, int]):
  """The bool [B, in] keep-mask of one output column, Bernoulli(p) exactly."""
  m = _bits_per_gate(p)
  if not m:
    return jax.random.bernoulli(key, p, shape)
  batch, fan_in = shape
  per_word = 32 // m
  words = jax.random.bits(key, (batch, math.ceil(fan_in / per_word)), jnp.uint32)
  shifts = jnp.arange(0, 32, m, dtype=jnp.uint32)
  values = (words[..., None] >> shifts) & jnp.uint32(2**m - 1)      # [B, words, 32/m]
  return (values < jnp.uint32(round(p * 2**m))).reshape(batch, -1)[:, :fan_in]


def gated_matmul(x, kernel, key, p: float, max_elements: int = MAX_ELEMENTS):
  """sum_i m[b, i, j] * kernel[i, j] * x[b, i] with m ~ Bernoulli(p), each
  (b, i, j) independent; x: [B, in], kernel: [in, out]. No gradient flows
  through it (see `Kakuritsu` for the straight-through layer)."""
  batch, fan_in = x.shape
  fan_out = kernel.shape[1]
  block = max(1, min(fan_out, max_elements // max(batch * fan_in, 1)))
  blocks = math.ceil(fan_out / block)
  pad = blocks * block - fan_out
  columns = jnp.arange(blocks * block).reshape(blocks, block)
  kernels = jnp.pad(kernel, ((0, 0), (0, pad))).T.reshape(blocks, block, fan_in)

  def one_block(args):
    cols, w = args                                                 # [block], [block, in]
    keep = jax.vmap(lambda j: column_mask(jax.random.fold_in(key, j), p,
                                          (batch, fan_in)))(cols)   # [block, B, in]
    return jnp.einsum("bi,cbi,ci->bc", x, keep.astype(x.dtype), w)

  y = jax.lax.map(one_block, (columns, kernels))                   # [blocks, B, block]
  return y.transpose(1, 0, 2).reshape(batch, blocks * block)[:, :fan_out]


def _straight_through(x, kernel, gated):
  """Forward: `gated`; backward: the gradients of x @ kernel."""
  plain = x @ kernel
  return plain + jax.lax.stop_gradient(gated - plain)


@dataclasses.dataclass(frozen=True)
class Gate:
  """How a gated layer behaves in one call.

  kind: "none" (plain x @ W), "kakuritsu" (keep each synapse per sample
  with probability `p`, unscaled), or "dropout" (x @ W, then dropout with
  drop probability `rate`, scaled by 1/(1-rate) as torch's Dropout).
  """
  kind: str = "none"
  p: float = 0.5
  rate: float = 0.5

  KINDS = ("none", "kakuritsu", "dropout")

  def __post_init__(self):
    if self.kind not in self.KINDS:
      raise ValueError(f"gate kind {self.kind!r} is not valid; choose one of: "
                       f"{', '.join(self.KINDS)}")
    if not 0.0 <= self.p <= 1.0 or not 0.0 <= self.rate < 1.0:
      raise ValueError(f"gate p={self.p} must be in [0, 1] and rate={self.rate} in [0, 1)")

  @property
  def random(self) -> bool:
    return (self.kind == "kakuritsu" and self.p < 1.0) or (self.kind == "dropout" and
                                                          self.rate > 0.0)

  def __str__(self):
    return {"none": "none", "kakuritsu": f"kakuritsu p={self.p:g}",
            "dropout": f"dropout {self.rate:g}"}[self.kind]


def uniform_init(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def torch_linear_init(key, shape, dtype=jnp.float32):
  """nn.Linear's default weight init: U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class GatedLinear(nn.Module):
  """A bias-free linear layer, gated per call by a `Gate`. Its random gates
  use the "gate" RNG stream (kakuritsu) or "dropout" (dropout)."""
  features: int
  kernel_init: Any = torch_linear_init
  max_elements: int = MAX_ELEMENTS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, gate: Gate = Gate()):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    if gate.kind == "kakuritsu" and gate.p < 1.0:
      y = _straight_through(x, kernel, gated_matmul(x, kernel, self.make_rng("gate"), gate.p,
                                                    self.max_elements))
    else:
      y = x @ kernel
    if gate.kind == "dropout" and gate.rate > 0.0:
      y = nn.Dropout(gate.rate, deterministic=False)(y)
    return y.reshape(*lead, self.features)


class Kakuritsu(nn.Module):
  """The myKakuritsu layer: `GatedLinear` with U(-0.1, 0.1) init and keep
  probability `p` (pass `p=1.0` at call time for the "switch" evaluation)."""
  features: int
  p: float = 0.5
  max_elements: int = MAX_ELEMENTS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, p: float | None = None):
    gate = Gate("kakuritsu", self.p if p is None else p)
    return GatedLinear(self.features, uniform_init(0.1), self.max_elements, self.dtype,
                       name="linear")(x, gate)


class GatedHead(nn.Module):
  """The original's classifier heads on 2048-d pooled features:
  fc1 (in -> hidden) -> ReLU -> fc2 (hidden -> classes), both bias-free and
  gated by the call's `Gate`:
    K: Gate("kakuritsu", 0.5), U(-0.1, 0.1) init (`weight_init="kakuritsu"`);
    D: Gate("dropout", rate=0.5), torch Linear init (dropout on the logits too);
    W: Gate("none"), torch Linear init.
  Any trained head can be evaluated under any gate (the eval matrix)."""
  hidden: int = 1000
  num_classes: int = 1000
  weight_init: str = "torch"       # torch | kakuritsu
  max_elements: int = MAX_ELEMENTS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, gate: Gate = Gate()):
    init = uniform_init(0.1) if self.weight_init == "kakuritsu" else torch_linear_init
    x = GatedLinear(self.hidden, init, self.max_elements, self.dtype, name="fc1")(x, gate)
    x = nn.relu(x)
    return GatedLinear(self.num_classes, init, self.max_elements, self.dtype, name="fc2")(x, gate)


class OnBackbone(nn.Module):
  """`backbone` (a model built with num_classes=0: pooled features) -> `head`.

  Params and BN statistics live under "backbone" and "head". Training uses
  the head's `gate`; `model(x, train=False)` is the deterministic "switch"
  evaluation, and `gate=` evaluates under any other `Gate`.
  `freeze_backbone` stops gradients at the features (pair it with
  `config.optimizer.freeze="^backbone/"`). `backbone_bn` is the backbone's
  BatchNorm while training: "batch" normalises with the batch's statistics
  and updates the running ones (the original: the frozen backbone stayed in
  train mode), "running" uses the running statistics and leaves them alone.
  """
  backbone: nn.Module
  head: nn.Module
  gate: Gate = Gate()
  freeze_backbone: bool = True
  backbone_bn: str = "batch"

  BACKBONE_BN = ("batch", "running")
  rng_streams = ("dropout", "gate")     # neurojax.rng: the streams training feeds it

  def features(self, x, train: bool = False):
    """The backbone's pooled features (no gradient when frozen)."""
    if self.backbone_bn not in self.BACKBONE_BN:
      raise ValueError(f"backbone_bn={self.backbone_bn!r} is not valid; choose one of: "
                       f"{', '.join(self.BACKBONE_BN)}")
    bn_train = train and (self.backbone_bn == "batch" or not self.freeze_backbone)
    features = self.backbone(x, train=bn_train)
    if features.ndim != 2:
      raise ValueError(f"the backbone gives features of shape {features.shape}; build it with "
                       "num_classes=0 so that it returns pooled [batch, features]")
    return jax.lax.stop_gradient(features) if self.freeze_backbone else features

  def classify(self, features, gate: Gate):
    """The head's logits under `gate` (needs only the head's params)."""
    return self.head(features, gate)

  def __call__(self, x, train: bool = False, gate: Gate | None = None):
    if gate is None:
      gate = self.gate if train else Gate()
    return self.classify(self.features(x, train), gate)
