"""Which weights to keep between generations (METHODS.md section 4).

Each policy returns a keep-mask for `regenerate(params, mask, fresh)`: a
bool array (True = keep) on every leaf a policy may reset, None on the
leaves it never touches. Paths are '/'-joined param paths in the
torchvision-style ResNet naming (`conv1`, `bn1`, `layer3_1/conv2`,
`layer2_0/downsample_conv`, `fc`; the CIFAR ResNets' `stage2_block0` works
too); `stage_of` maps them to 0 (stem), 1-4 (layer1-4) and 5 (the head).

- `dnr`: SNIP |w * sum_b |g_b|| over conv and fc kernels, downsample convs
  excluded; keep the global top `keep` fraction. BN and biases: never reset.
- `ke`: Knowledge Evolution's fixed "kels" split: each conv keeps
  [:ceil(s*in), :ceil(s*out)] (the stem keeps all its input channels), fc
  keeps [:ceil(s*in), :]; downsample convs included; BN and the fc bias kept.
- `llf`: later-layer forgetting: every conv (downsample included) and the fc
  weight and bias from `reset_layer` on are re-drawn; BN is kept.
- `layerwise`: in generation g of G, every parameter (BN scale and bias too;
  running stats live in batch_stats and are kept) from layer (4*g)//G + 1
  on, and the head, is re-drawn.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp

from neurojax.sparsity.masks import dense_masks
from neurojax.sparsity.scores import snip
from neurojax.sparsity.select import global_topk
from neurojax.tree import path_str

_LAYER = re.compile(r"^(?:layer|stage)(\d+)_")     # torchvision and CIFAR ResNet naming
HEAD_STAGE = 5


def stage_of(path: str) -> int:
  """0 for the stem, k for layer k, HEAD_STAGE for the classifier."""
  top = path.split("/")[0]
  m = _LAYER.match(top)
  if m:
    return int(m.group(1))
  return HEAD_STAGE if top in ("fc", "head", "classifier") else 0


def _masks(params, rule):
  """`rule(path, leaf)` -> keep-mask array or None, on every leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, x: rule(path_str(p), x), params)


def dnr(grad_fn, params, batches, keep: float):
  """DNR's data-aware mask: SNIP with |g| summed over `batches`, global top
  `keep` (e.g. 0.8 keeps the 80% most salient) over conv/fc kernels
  without downsample convs."""
  eligible = dense_masks(params, exclude="downsample")
  return global_topk(snip(grad_fn, params, batches, eligible, absolute_per_batch=True), keep)


def ke(params, split_rate: float, image_channels: int = 3):
  """KE's fixed split at `split_rate`."""
  def rule(path, x):
    if not path.endswith("kernel"):
      return None
    keep = jnp.zeros(x.shape, jnp.bool_)
    if x.ndim == 2:                                   # fc [in, out]: the first inputs
      return keep.at[:math.ceil(split_rate * x.shape[0]), :].set(True)
    cin, cout = x.shape[-2:]
    kin = cin if stage_of(path) == 0 and cin == image_channels else math.ceil(split_rate * cin)
    return keep.at[..., :kin, :math.ceil(split_rate * cout)].set(True)
  return _masks(params, rule)


def llf(params, reset_layer: str = "layer4"):
  """Re-draw every kernel from `reset_layer` (e.g. "layer4") on, and the fc bias."""
  m = re.fullmatch(r"layer(\d)", reset_layer)
  if not m:
    raise ValueError(f"reset_layer={reset_layer!r} must name a stage, layer1 .. layer4")
  first = int(m.group(1))

  def rule(path, x):
    if stage_of(path) < first:
      return None
    if path.endswith("kernel") or (stage_of(path) == HEAD_STAGE and path.endswith("bias")):
      return jnp.zeros(x.shape, jnp.bool_)
    return None
  return _masks(params, rule)


def layerwise(params, generation: int, num_generations: int):
  """Re-draw every parameter (BN affine included) from layer
  (4 * generation) // num_generations + 1 on, and the head."""
  first = (4 * generation) // num_generations + 1
  return _masks(params, lambda path, x: jnp.zeros(x.shape, jnp.bool_)
                if stage_of(path) >= first else None)
