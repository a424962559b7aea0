"""Which weights to keep between generations (METHODS.md section 4).

Each policy returns a keep-mask for `regenerate(params, mask, fresh)`: a
bool array (True = keep) on every leaf a policy may reset, None on the
leaves it never touches. Paths are '/'-joined paths in the `params`
collection (`conv1/kernel`, `layer3_1/conv2/kernel`, `head_fc/bias`).

`ke`, `llf` and `layerwise` act by depth, so they take the model's
`stages` (`models.stages(name)`, a `models.Stages`): called on a path it
gives the stage, 0 for the stem, 1 .. S (`stages.num_stages`) for the body
stages and S + 1 (`stages.head`) for the head. Every model of the registry
declares them: the torchvision ResNets (layer1-4, S = 4), the CIFAR and Dit
ResNets (stage1-3, S = 3), the ConvNeXts and Dit-ConvNeXts (timm's
stages_0-3 with their downsamples, S = 4; the head is head_norm + head_fc)
and the LeNets (a stage per layer: LeNet-5 S = 2, LeNet-300-100 S = 1);
`models.stages` refuses a model that declares none. `dnr` works on any model.

- `dnr`: SNIP |w * sum_b |g_b|| over conv and fc kernels, downsample convs
  excluded; keep the global top `keep` fraction. Norms and biases: never reset.
- `ke`: Knowledge Evolution's fixed "kels" split: each conv and dense kernel
  keeps [:ceil(s*in), :ceil(s*out)], except that the stem keeps all its
  inputs and the head all its outputs (fc: [:ceil(s*in), :]); downsample
  convs included; norms, biases and other params (Dit's Q) kept.
- `llf`: later-layer forgetting: every conv and dense kernel (downsample
  included) from stage `reset_layer` on is re-drawn; their biases only with
  `biases=True` (the original re-draws the weight alone: the fc bias is
  kept); norms (BN, LN), ConvNeXt's layer scale and Dit's Q are kept. `reset_layer` is
  "layerK", body stage K (1 <= K <= S) of any model, or one of the model's
  own stage names after the stem (ResNet "layer4" or "fc", CIFAR ResNet
  "stage3", ConvNeXt "stages_3" or "head", LeNet-5 "fc1").
- `layerwise`: in generation g of G, every parameter (norm scale and bias
  too; running stats live in batch_stats and are kept) from body stage
  (S*g)//G + 1 on, and the head, is re-drawn ((4g)//G + 1 on a ResNet-18).

What the re-drawn entries become is `redraw_values(kind, ...)`:
- `torch_default`: PyTorch's default layer init, as the originals'
  `split_reinitialize` (evolve_mode="rand") and DNR's `re_init_weights` do:
  kaiming_uniform(a=sqrt(5)) for conv and dense kernels, i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)), and the same
  bound for their biases; every other leaf (norms, layer scale, Dit's Q)
  takes the model's own init (PyTorch's BN default too: scale 1, bias 0);
- `model_init`: the model's own initialisers (a fresh model, as the
  original layer-wise script copies from a newly built one);
- `zero`: conv and dense kernels and biases 0 (evolve_mode="zero"), other
  leaves the model's init.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from neurojax.sparsity.masks import dense_masks
from neurojax.sparsity.scores import snip
from neurojax.sparsity.select import global_topk
from neurojax.tree import path_str

REDRAWS = ("torch_default", "model_init", "zero")


def _masks(params, rule):
  """`rule(path, leaf)` -> keep-mask array or None, on every leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, x: rule(path_str(p), x), params)


def dnr(grad_fn, params, batches, keep: float):
  """DNR's data-aware mask: SNIP with |g| summed over `batches`, global top
  `keep` (e.g. 0.8 keeps the 80% most salient) over conv/fc kernels
  without downsample convs."""
  eligible = dense_masks(params, exclude="downsample")
  return global_topk(snip(grad_fn, params, batches, eligible, absolute_per_batch=True), keep)


def ke(params, split_rate: float, stages):
  """KE's fixed split at `split_rate`; `stages` finds the stem and the head."""
  def rule(path, x):
    if not path.endswith("kernel"):
      return None
    stage = stages(path)
    cin, cout = x.shape[-2:]                          # conv [..., in, out], dense [in, out]
    kin = cin if stage == 0 else math.ceil(split_rate * cin)
    kout = cout if stage == stages.head else math.ceil(split_rate * cout)
    return jnp.zeros(x.shape, jnp.bool_).at[..., :kin, :kout].set(True)
  return _masks(params, rule)


def reset_stage(reset_layer: str, stages) -> int:
  """The stage `reset_layer` names: "layerK" is body stage K of any model;
  the model's own stage names (after the stem) are accepted too."""
  choices = {name: k for k, name in enumerate(stages.names) if k > 0}
  choices.update({f"layer{k}": k for k in range(1, stages.num_stages + 1)})
  if reset_layer not in choices:
    s = stages.num_stages
    layers = "layer1" if s == 1 else f"layer1 .. layer{s}"
    raise ValueError(f"reset_layer={reset_layer!r} is not a stage of model "
                     f"{stages.model or '(unnamed)'}: choose {layers} (layerK: body stage K) or "
                     f"one of its stage names: {', '.join(stages.names[1:])}")
  return choices[reset_layer]


def _layer_biases(params) -> set[str]:
  """The biases of conv and dense layers (a `bias` beside a `kernel`), not norms'."""
  paths = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  return {p[:-len("kernel")] + "bias" for p in paths if p.endswith("kernel")} & paths


def llf(params, reset_layer: str, stages, biases: bool = False):
  """Re-draw every conv and dense kernel from stage `reset_layer` (e.g.
  "layer4") on, and with `biases` their biases too."""
  first = reset_stage(reset_layer, stages)
  bias_paths = _layer_biases(params) if biases else set()

  def rule(path, x):
    if stages(path) >= first and (path.endswith("kernel") or path in bias_paths):
      return jnp.zeros(x.shape, jnp.bool_)
    return None
  return _masks(params, rule)


def layerwise(params, generation: int, num_generations: int, stages):
  """Re-draw every parameter (norm affine included) from body stage
  (S * generation) // num_generations + 1 on, and the head."""
  first = (stages.num_stages * generation) // num_generations + 1
  return _masks(params, lambda path, x: jnp.zeros(x.shape, jnp.bool_)
                if stages(path) >= first else None)


def redraw_values(kind: str, model_init, key):
  """The values the re-drawn entries take (module docstring): `model_init`
  is a fresh init of the model (its params); `key` draws the
  `torch_default` values, one sub-key per leaf."""
  if kind not in REDRAWS:
    raise ValueError(f"redraw={kind!r} is not valid; choose one of: {', '.join(REDRAWS)}")
  if kind == "model_init":
    return model_init
  flat, treedef = jax.tree_util.tree_flatten_with_path(model_init)
  paths = [path_str(p) for p, _ in flat]
  kernels = {p[:-len("kernel")]: x.shape for p, (_, x) in zip(paths, flat)
             if p.endswith("kernel")}
  keys = jax.random.split(jax.random.fold_in(key, 1), len(flat))
  out = []
  for path, (_, x), k in zip(paths, flat, keys):
    owner = path[:-len("kernel")] if path.endswith("kernel") else (
        path[:-len("bias")] if path.endswith("bias") else None)
    if owner not in kernels:
      out.append(x)
    elif kind == "zero":
      out.append(jnp.zeros_like(x))
    else:    # conv [kh, kw, in / groups, out], dense [in, out]: torch's fan_in
      bound = 1.0 / math.sqrt(math.prod(kernels[owner][:-1]))
      out.append(jax.random.uniform(k, x.shape, x.dtype, -bound, bound))
  return jax.tree_util.tree_unflatten(treedef, out)
