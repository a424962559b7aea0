"""Stochastic dendritic gating (myKakuritsu; METHODS.md section 1).

A bias-free linear layer whose synapses are kept independently per sample
with keep-probability p, with no 1/p rescaling:

    y[b, j] = sum_i m[b, i, j] * W[i, j] * x[b, i],    m ~ Bernoulli(p)

and the straight-through gradient of the plain layer x @ W (the mask is
ignored by the backward pass).

Sampling: counter-based, exact, and the same on every backend. The layer's
key becomes a 2-word seed s (`gate_seed`). Each gate reads m random bits,
with m the smallest of 1, 2, 4, 8, 16 such that p * 2^m is an integer (m=1
at p=0.5), and is kept if they encode a value below t = p * 2^m: that is
Bernoulli(p) exactly. For any other p, m = 32 and t = round(p * 2^32), so
the keep probability is within 2^-33 of p. One call of Threefry-2x32 (20
rounds, Random123's and `jax.random`'s default generator), keyed by s, at
the counter (j, b * P + k) gives two 32-bit words: the g = 64/m gates of
output column j, sample b, inputs i = k*g .. k*g + g - 1 (P = ceil(in/g)).
The first word holds the first g/2 gates, gate r of a word in bits
[m*r, m*r + m). `pair_gates` is that draw, written once and used by both
implementations:

- "xla" (the default): blocks of output columns through `lax.map`, each
  block's random words, gates and gated products fused into one reduction,
  so at most `max_elements` gated products exist at once. The gates are
  never stored as a mask: at batch 64, 2048 -> 1000, a float mask would be
  524 MB. The draws do not depend on the block size, so `max_elements`
  changes memory, never results.
- "pallas": a Pallas kernel for GPU/TPU that draws each tile's gates in
  registers (from the seed and the tile's indices) and never writes them to
  memory. In interpret mode (CPU) it matches "xla" exactly on data whose
  sums are exact in float32 (tests/test_gating.py).

Randomness comes from the Flax RNG stream "gate".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_ELEMENTS = 1 << 19       # gated products computed at once, per block of columns
IMPLS = ("xla", "pallas")
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
  """Random123's Threefry-2x32 with 20 rounds on uint32 arrays (key k0, k1;
  counter x0, x1): elementwise, so it fuses into its consumer and runs inside
  a Pallas kernel. Equals `jax.extend.random.threefry_2x32`."""
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
      x1 = x1 ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + jnp.uint32(group + 1)
  return x0, x1


def bits_per_gate(p: float) -> int:
  """m: the smallest of 1, 2, 4, 8, 16 with p * 2^m an integer, else 32."""
  for m in (1, 2, 4, 8, 16):
    if float(p * 2**m).is_integer():
      return m
  return 32


def _threshold(p: float, m: int) -> int:
  return min(round(p * 2**m), 2**32 - 1)


def gate_seed(key):
  """The 2-word uint32 seed of a layer's gates, from a key of any impl."""
  return jax.random.bits(key, (2,), jnp.uint32)


def pair_gates(seed, column, counter, p: float):
  """The bool [..., 64/m] gates that one Threefry call draws at counter
  (column, counter) (uint32 arrays of one shape), in input order."""
  m = bits_per_gate(p)
  half = 32 // m
  w0, w1 = threefry2x32(seed[0], seed[1], column, counter)
  shape = (*column.shape, 2 * half)
  r = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
  word = jnp.where(r < half, w0[..., None], w1[..., None])
  shift = jnp.uint32(m) * (r % jnp.uint32(half))
  values = (word >> shift) & jnp.uint32(2**m - 1)
  return values < jnp.uint32(_threshold(p, m))


def _padded(x, kernel, p: float):
  """x [B, P*g] and kernel^T [out, P*g], zero-padded to whole Threefry calls."""
  g = 64 // bits_per_gate(p)
  fan_in = x.shape[1]
  pad = -fan_in % g
  return jnp.pad(x, ((0, 0), (0, pad))), jnp.pad(kernel.T, ((0, 0), (0, pad))), g


def gated_matmul(x, kernel, key, p: float, max_elements: int = MAX_ELEMENTS,
                 impl: str = "xla", interpret: bool | None = None):
  """sum_i m[b, i, j] * kernel[i, j] * x[b, i] with m ~ Bernoulli(p), each
  (b, i, j) independent; x: [B, in], kernel: [in, out]. No gradient flows
  through it (see `Kakuritsu` for the straight-through layer). `impl`:
  "xla" or "pallas" (run in Pallas interpret mode where `interpret`, by
  default on CPU)."""
  if impl not in IMPLS:
    raise ValueError(f"gate impl={impl!r} is not valid; choose one of: {', '.join(IMPLS)}")
  seed = gate_seed(key)
  x, kernel = jax.lax.stop_gradient(x), jax.lax.stop_gradient(kernel)   # nothing to trace back
  if impl == "pallas":
    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    return _pallas_gated_matmul(x, kernel, seed, p, interpret)
  batch = x.shape[0]
  fan_out = kernel.shape[1]
  xs, ws, g = _padded(x, kernel, p)
  calls = xs.shape[1] // g
  block = max(1, min(fan_out, max_elements // max(batch * calls * g, 1)))
  blocks = math.ceil(fan_out / block)
  ws = jnp.pad(ws, ((0, blocks * block - fan_out), (0, 0))).reshape(blocks, block, calls, g)
  xs = xs.reshape(batch, calls, g)
  columns = jnp.arange(blocks * block, dtype=jnp.uint32).reshape(blocks, block)
  counters = (jnp.arange(batch, dtype=jnp.uint32)[:, None] * jnp.uint32(calls)
              + jnp.arange(calls, dtype=jnp.uint32))                      # [B, P]

  def one_block(args):
    cols, w = args                                                       # [block], [block, P, g]
    shape = (block, batch, calls)
    keep = pair_gates(seed, jnp.broadcast_to(cols[:, None, None], shape),
                      jnp.broadcast_to(counters, shape), p)               # [block, B, P, g]
    return jnp.sum(jnp.where(keep, xs[None] * w[:, None], 0), axis=(2, 3))

  y = jax.lax.map(one_block, (columns, ws))                               # [blocks, block, B]
  return y.reshape(blocks * block, batch).T[:, :fan_out]


def _pallas_gated_matmul(x, kernel, seed, p: float, interpret: bool,
                         rows: int = 16, cols: int = 128):
  """The Pallas kernel: a grid of [rows, cols] output tiles, each looping
  over the input in Threefry calls of g gates, its gates drawn in registers."""
  from jax.experimental import pallas as pl  # pylint: disable=g-import-not-at-top
  batch, fan_out = x.shape[0], kernel.shape[1]
  xs, ws, g = _padded(x, kernel, p)
  calls = xs.shape[1] // g
  rows, cols = min(rows, batch), min(cols, fan_out)
  xs = jnp.pad(xs, ((0, -batch % rows), (0, 0)))
  ws = jnp.pad(ws, ((0, -fan_out % cols), (0, 0)))

  def body(seed_ref, x_ref, w_ref, out_ref):
    shape = (rows, cols)
    sample = (pl.program_id(0) * rows + jax.lax.broadcasted_iota(jnp.int32, shape, 0))
    column = (pl.program_id(1) * cols + jax.lax.broadcasted_iota(jnp.int32, shape, 1))
    s = (seed_ref[0], seed_ref[1])

    def step(k, acc):
      counter = sample.astype(jnp.uint32) * jnp.uint32(calls) + k.astype(jnp.uint32)
      keep = pair_gates(s, column.astype(jnp.uint32), counter, p)         # [rows, cols, g]
      xk = x_ref[:, pl.ds(k * g, g)]                                       # [rows, g]
      wk = w_ref[:, pl.ds(k * g, g)]                                       # [cols, g]
      products = xk[:, None, :].astype(jnp.float32) * wk[None, :, :].astype(jnp.float32)
      return acc + jnp.sum(jnp.where(keep, products, 0.0), axis=-1)

    acc = jax.lax.fori_loop(0, calls, step, jnp.zeros(shape, jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)

  grid = (xs.shape[0] // rows, ws.shape[0] // cols)
  y = pl.pallas_call(
      body, out_shape=jax.ShapeDtypeStruct((xs.shape[0], ws.shape[0]), x.dtype), grid=grid,
      in_specs=[pl.BlockSpec((2,), lambda i, j: (0,)),
                pl.BlockSpec((rows, xs.shape[1]), lambda i, j: (i, 0)),
                pl.BlockSpec((cols, ws.shape[1]), lambda i, j: (j, 0))],
      out_specs=pl.BlockSpec((rows, cols), lambda i, j: (i, j)),
      interpret=interpret)(seed, xs, ws)
  return y[:batch, :fan_out]


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
  use the "gate" RNG stream (kakuritsu) or "dropout" (dropout). `impl`:
  how Kakuritsu gates are computed, "xla" or "pallas" (see the module)."""
  features: int
  kernel_init: Any = torch_linear_init
  max_elements: int = MAX_ELEMENTS
  dtype: Any = jnp.float32
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, gate: Gate = Gate()):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    if gate.kind == "kakuritsu" and gate.p < 1.0:
      y = _straight_through(x, kernel, gated_matmul(x, kernel, self.make_rng("gate"), gate.p,
                                                    self.max_elements, self.impl))
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
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, p: float | None = None):
    gate = Gate("kakuritsu", self.p if p is None else p)
    return GatedLinear(self.features, uniform_init(0.1), self.max_elements, self.dtype,
                       self.impl, name="linear")(x, gate)


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
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, gate: Gate = Gate()):
    init = uniform_init(0.1) if self.weight_init == "kakuritsu" else torch_linear_init
    layer = functools.partial(GatedLinear, kernel_init=init, max_elements=self.max_elements,
                              dtype=self.dtype, impl=self.impl)
    x = nn.relu(layer(self.hidden, name="fc1")(x, gate))
    return layer(self.num_classes, name="fc2")(x, gate)


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
