"""The generation mask policies reset exactly the entries the spec names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax import models
from neurojax import sparsity as sp
from neurojax.sparsity import policies
from neurojax.tree import path_str


@pytest.fixture(scope="module")
def resnet18():
  model = models.get_model("resnet18", num_classes=10, stem="small")
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False))(
      jax.random.PRNGKey(0))
  return model, variables


def _flat(tree):
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: x is None)[0]}


def test_stage_of():
  assert [policies.stage_of(p) for p in ("conv1/kernel", "bn1/scale", "layer1_0/conv1/kernel",
                                         "layer4_1/bn2/bias", "stage3_block2/conv1/kernel",
                                         "fc/kernel")] == [0, 0, 1, 4, 3, 5]


def test_ke_split_keeps_the_leading_channels(resnet18):
  _, v = resnet18
  masks = _flat(policies.ke(v["params"], 0.5, image_channels=1))
  m = np.asarray(masks["layer1_0/conv1/kernel"])               # 3x3x64x64
  assert m[:, :, :32, :32].all() and m.sum() == 9 * 32 * 32
  m = np.asarray(masks["conv1/kernel"])                        # stem 3x3x1x64: all inputs
  assert m[:, :, :, :32].all() and m.sum() == 9 * 1 * 32
  m = np.asarray(masks["layer2_0/downsample_conv/kernel"])     # 1x1x64x128: included
  assert m.sum() == 32 * 64
  m = np.asarray(masks["fc/kernel"])                           # [512, 10]: first inputs
  assert m[:256].all() and not m[256:].any()
  assert masks["fc/bias"] is None and masks["layer1_0/bn1/scale"] is None


def test_llf_resets_layer4_and_the_head(resnet18):
  _, v = resnet18
  masks = _flat(policies.llf(v["params"], "layer4"))
  for path, m in masks.items():
    reset = path.startswith(("layer4", "fc")) and (path.endswith("kernel") or path == "fc/bias")
    assert (m is not None and not np.asarray(m).any()) if reset else m is None, path
  with pytest.raises(ValueError, match="layer1 .. layer4"):
    policies.llf(v["params"], "block4")


@pytest.mark.parametrize("generation,first", [(1, 1), (2, 2), (4, 3), (7, 4)])
def test_layerwise_resets_everything_from_its_stage(resnet18, generation, first):
  _, v = resnet18
  masks = _flat(policies.layerwise(v["params"], generation, 8))
  for path, m in masks.items():
    reset = policies.stage_of(path) >= first
    assert (m is not None and not np.asarray(m).any()) if reset else m is None, path
  assert masks["fc/bias"] is not None
  assert (masks["layer4_0/bn1/scale"] is not None)      # BN affine is reset too


def test_dnr_keeps_exactly_the_most_salient_fraction(resnet18):
  model, v = resnet18
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(4, 8, 8, 1)).astype(np.float32),
              "label": rng.integers(0, 10, 4).astype(np.int32)} for _ in range(2)]
  grad_fn = sp.ce_grad_fn(model, v["batch_stats"])
  masks = policies.dnr(grad_fn, v["params"], batches, keep=0.8)
  flat = _flat(masks)
  eligible = {p: m for p, m in flat.items() if m is not None}
  assert all(p.endswith("kernel") and "downsample" not in p for p in eligible)
  assert flat["layer2_0/downsample_conv/kernel"] is None and flat["fc/bias"] is None
  kept, total = sp.count(masks)
  assert total == sum(np.asarray(m).size for m in eligible.values())
  assert kept == round(0.8 * total)
  # The kept entries are those with the largest |w * sum_b |g_b||.
  grads = [_flat(grad_fn(v["params"], b)) for b in batches]
  params = _flat(v["params"])
  scores = np.concatenate([np.abs(np.asarray(params[p]) * sum(np.abs(np.asarray(g[p]))
                                                               for g in grads)).ravel()
                           for p in eligible])
  keep = np.concatenate([np.asarray(m).ravel() for m in eligible.values()])
  assert scores[keep].min() >= scores[~keep].max()
