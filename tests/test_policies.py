"""The generation mask policies reset exactly the entries the spec names."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax import models
from neurojax import sparsity as sp
from neurojax.config import base_config
from neurojax.models import registry
from neurojax.sparsity import policies
from neurojax.tree import path_str

RESNET = models.stages("resnet18")


@pytest.fixture(scope="module")
def resnet18():
  model = models.get_model("resnet18", num_classes=10, stem="small")
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False))(
      jax.random.PRNGKey(0))
  return model, variables


def _flat(tree):
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: x is None)[0]}


def test_stages_of_the_resnets():
  assert [RESNET(p) for p in ("conv1/kernel", "bn1/scale", "layer1_0/conv1/kernel",
                              "layer4_1/bn2/bias", "fc/kernel")] == [0, 0, 1, 4, 5]
  cifar = models.stages("resnet20")
  assert [cifar(p) for p in ("bn1/bias", "stage1_block0/conv1/kernel",
                             "stage3_block2/conv1/kernel", "fc/bias")] == [0, 1, 3, 4]
  assert (RESNET.num_stages, RESNET.head, cifar.num_stages, cifar.head) == (4, 5, 3, 4)
  with pytest.raises(ValueError, match="in no stage that model resnet18 declares"):
    RESNET("head_fc/kernel")


def test_ke_split_keeps_the_leading_channels(resnet18):
  _, v = resnet18
  masks = _flat(policies.ke(v["params"], 0.5, RESNET))
  m = np.asarray(masks["layer1_0/conv1/kernel"])               # 3x3x64x64
  assert m[:, :, :32, :32].all() and m.sum() == 9 * 32 * 32
  m = np.asarray(masks["conv1/kernel"])                        # stem 3x3x1x64: all inputs
  assert m[:, :, :, :32].all() and m.sum() == 9 * 1 * 32
  m = np.asarray(masks["layer2_0/downsample_conv/kernel"])     # 1x1x64x128: included
  assert m.sum() == 32 * 64
  m = np.asarray(masks["fc/kernel"])                           # [512, 10]: first inputs
  assert m[:256].all() and not m[256:].any()
  assert masks["fc/bias"] is None and masks["layer1_0/bn1/scale"] is None


@pytest.mark.parametrize("biases", [False, True])
def test_llf_resets_layer4_and_the_head(resnet18, biases):
  _, v = resnet18
  masks = _flat(policies.llf(v["params"], "layer4", RESNET, biases=biases))
  for path, m in masks.items():
    reset = path.startswith(("layer4", "fc")) and (
        path.endswith("kernel") or (biases and path == "fc/bias"))
    assert (m is not None and not np.asarray(m).any()) if reset else m is None, path
  with pytest.raises(ValueError, match="layer1 .. layer4"):
    policies.llf(v["params"], "block4", RESNET)


@pytest.mark.parametrize("generation,first", [(1, 1), (2, 2), (4, 3), (7, 4)])
def test_layerwise_resets_everything_from_its_stage(resnet18, generation, first):
  _, v = resnet18
  masks = _flat(policies.layerwise(v["params"], generation, 8, RESNET))
  for path, m in masks.items():
    top = path.split("/")[0]
    stage = int(top[5]) if top.startswith("layer") else 5 if top == "fc" else 0
    reset = stage >= first
    assert (m is not None and not np.asarray(m).any()) if reset else m is None, path
  assert masks["fc/bias"] is not None
  assert (masks["layer4_0/bn1/scale"] is not None)      # BN affine is reset too


def _leaf_sizes_and_fans(params):
  """{path: (size, fan_in)} of the conv and dense kernels and their biases."""
  flat = _flat(params)
  out = {}
  for path, x in flat.items():
    owner = path.rsplit("/", 1)[0] + "/kernel"
    if path.endswith(("kernel", "bias")) and owner in flat:
      out[path] = (x.size, int(np.prod(flat[owner].shape[:-1])))
  return out


def test_the_torch_default_redraw_has_pytorchs_distribution(resnet18):
  # kaiming_uniform(a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in), std b/sqrt(3);
  # the biases the same bound; everything else (BN) the model's own init.
  _, v = resnet18
  init = v["params"]
  fresh = _flat(policies.redraw_values("torch_default", init, jax.random.PRNGKey(7)))
  fans = _leaf_sizes_and_fans(init)
  assert "fc/bias" in fans and "layer4_0/downsample_conv/kernel" in fans
  for path, x in _flat(init).items():
    w = np.asarray(fresh[path])
    if path not in fans:
      np.testing.assert_array_equal(w, np.asarray(x), err_msg=path)     # BN: untouched
      continue
    n, fan_in = fans[path]
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(w).max() <= np.float32(bound), path
    if n >= 500:                  # the sample std within 5 standard errors, 1/sqrt(2n)
      assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 5 / np.sqrt(2 * n), path
  w = fresh["layer4_0/conv1/kernel"]                    # the layer: 0.0120 vs 0.0295
  assert abs(np.std(w) - 1 / np.sqrt(3 * 9 * 256)) < 2e-4
  assert abs(np.std(init["layer4_0"]["conv1"]["kernel"]) / np.std(w) - np.sqrt(6)) < 0.05
  again = _flat(policies.redraw_values("torch_default", init, jax.random.PRNGKey(8)))
  assert not np.array_equal(again["fc/kernel"], fresh["fc/kernel"])      # the key draws


def test_the_zero_and_model_init_redraws(resnet18):
  _, v = resnet18
  init = v["params"]
  fans = _leaf_sizes_and_fans(init)
  zero = _flat(policies.redraw_values("zero", init, jax.random.PRNGKey(0)))
  for path, x in _flat(init).items():
    expected = np.zeros(x.shape) if path in fans else np.asarray(x)
    np.testing.assert_array_equal(zero[path], expected, err_msg=path)
  assert policies.redraw_values("model_init", init, jax.random.PRNGKey(0)) is init
  with pytest.raises(ValueError, match="redraw='kaiming'.*torch_default, model_init, zero"):
    policies.redraw_values("kaiming", init, jax.random.PRNGKey(0))


def test_a_redraw_keeps_the_kept_entries_bit_identical(resnet18):
  _, v = resnet18
  trained = jax.tree.map(lambda x: 3.0 * x + 0.5, v["params"])     # unlike any fresh draw
  keep = policies.ke(trained, 0.5, RESNET)
  fresh = policies.redraw_values("torch_default", v["params"], jax.random.PRNGKey(1))
  new, old, drawn, masks = (_flat(t) for t in (sp.regenerate(trained, keep, fresh), trained,
                                               fresh, keep))
  for path, m in masks.items():
    if m is None:
      np.testing.assert_array_equal(new[path], old[path], err_msg=path)
      continue
    m = np.asarray(m)
    np.testing.assert_array_equal(np.asarray(new[path])[m], np.asarray(old[path])[m])
    np.testing.assert_array_equal(np.asarray(new[path])[~m], np.asarray(drawn[path])[~m])


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


def test_the_reset_fraction_keeps_the_count_the_keep_fraction_kept():
  # config.generations.reset=0.2 replaced keep=0.8; the driver keeps 1 - reset.
  from neurojax.sparsity.select import keep_count  # pylint: disable=g-import-not-at-top
  assert 1.0 - base_config().generations.reset == 0.8
  assert all(keep_count(1.0 - 0.2, n) == keep_count(0.8, n) for n in range(200_001))


# The other models: the expected leaves are enumerated by name prefix, not by
# the stage function under test.

def _shapes(name, image=(1, 32, 32, 3), **options):
  model = models.get_model(name, num_classes=10, **options)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros(image), train=False),
                        jax.random.PRNGKey(0))["params"]


@pytest.fixture(scope="module")
def convnext_t():
  return _shapes("convnext_tiny")


@pytest.fixture(scope="module")
def lenet5():
  return _shapes("lenet5", (1, 28, 28, 1))


@pytest.fixture(scope="module")
def resnet20():
  return _shapes("resnet20")


def _check(masks, reset):
  """Every leaf `reset(path)` names is all-False, every other leaf None."""
  for path, m in masks.items():
    if reset(path):
      assert m is not None and not np.asarray(m).any(), path
    else:
      assert m is None, path
  assert any(reset(p) for p in masks)


def _layer(path, biases=True):
  """A conv's or dense layer's kernel, or with `biases` its bias (not a
  norm's, a layer scale, Dit's Q)."""
  module, leaf = path.split("/")[-2:]
  leaves = ("kernel", "bias") if biases else ("kernel",)
  return leaf in leaves and re.search("conv|fc", module) is not None


@pytest.mark.parametrize("reset_layer,prefixes", [
    ("layer4", ("stages_3_", "head_")), ("stages_3", ("stages_3_", "head_")),
    ("layer2", ("stages_1_", "stages_2_", "stages_3_", "head_")), ("head", ("head_",))])
def test_llf_on_convnext(convnext_t, reset_layer, prefixes):
  masks = _flat(policies.llf(convnext_t, reset_layer, models.stages("convnext_tiny"),
                             biases=True))
  _check(masks, lambda p: p.startswith(prefixes) and _layer(p))
  if reset_layer != "head":                           # the downsample is in its stage
    assert masks["stages_3_downsample_conv/bias"] is not None
  assert masks["stages_3_downsample_norm/scale"] is None and masks["head_norm/bias"] is None
  assert masks["stages_3_blocks_0/gamma"] is None and masks["head_fc/bias"] is not None


@pytest.mark.parametrize("generation,first", [(1, 1), (2, 2), (4, 3), (7, 4)])
def test_layerwise_on_convnext(convnext_t, generation, first):
  masks = _flat(policies.layerwise(convnext_t, generation, 8, models.stages("convnext_tiny")))
  prefixes = tuple(f"stages_{s}_" for s in range(first - 1, 4)) + ("head_",)
  _check(masks, lambda p: p.startswith(prefixes))


@pytest.mark.parametrize("reset_layer,layers", [
    ("layer1", ("conv2", "fc1", "fc2")), ("conv2", ("conv2", "fc1", "fc2")),
    ("layer2", ("fc1", "fc2")), ("fc2", ("fc2",)), ("head", None)])
def test_llf_on_lenet5(lenet5, reset_layer, layers):
  stages = models.stages("lenet5")
  if layers is None:          # LeNet-5's head is fc2, so "head" is not one of its names
    with pytest.raises(ValueError, match=r"layer1 \.\. layer2 .*conv2, fc1, fc2"):
      policies.llf(lenet5, reset_layer, stages)
    return
  _check(_flat(policies.llf(lenet5, reset_layer, stages)),
         lambda p: p.split("/")[0] in layers and p.endswith("kernel"))


@pytest.mark.parametrize("generation,layers", [(1, ("conv2", "fc1", "fc2")),
                                               (2, ("fc1", "fc2")), (3, ("fc1", "fc2"))])
def test_layerwise_on_lenet5(lenet5, generation, layers):
  masks = _flat(policies.layerwise(lenet5, generation, 4, models.stages("lenet5")))
  _check(masks, lambda p: p.split("/")[0] in layers)


def test_llf_and_layerwise_on_a_cifar_resnet(resnet20):
  stages = models.stages("resnet20")
  for name in ("layer3", "stage3"):
    _check(_flat(policies.llf(resnet20, name, stages)),
           lambda p: p.startswith(("stage3_", "fc/")) and _layer(p, biases=False))
  with pytest.raises(ValueError, match=r"not a stage of model resnet20: choose layer1 \.\. layer3"):
    policies.llf(resnet20, "layer4", stages)
  for generation, first in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)]:     # (3g)//6 + 1
    prefixes = tuple(f"stage{k}_" for k in range(first, 4)) + ("fc/",)
    _check(_flat(policies.layerwise(resnet20, generation, 6, stages)),
           lambda p: p.startswith(prefixes))


def test_ke_splits_every_layer_of_an_mlp():
  params = _shapes("lenet_300_100", (1, 28, 28, 1))
  masks = _flat(policies.ke(params, 0.5, models.stages("lenet_300_100")))
  m = np.asarray(masks["fc1/kernel"])                 # the stem [784, 300]: all inputs
  assert m[:, :150].all() and m.sum() == 784 * 150
  m = np.asarray(masks["fc2/kernel"])                 # [300, 100]
  assert m[:150, :50].all() and m.sum() == 150 * 50
  m = np.asarray(masks["fc3/kernel"])                 # the head [100, 10]: all outputs
  assert m[:50].all() and m.sum() == 50 * 10
  assert all(masks[f"fc{k}/bias"] is None for k in (1, 2, 3))


class _NoStages(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(x)


def test_a_model_without_stages_is_refused(monkeypatch):
  monkeypatch.setitem(registry._MODELS, "no_stages", lambda **kw: _NoStages())
  with pytest.raises(ValueError, match=r"model 'no_stages' declares no stages.*models that do: "
                                       r".*convnext_tiny.*lenet5.*resnet18"):
    models.stages("no_stages")
  from neurojax.methods import generations
  config = base_config("resnet18")
  config.method = "generations"
  config.model.name = "no_stages"
  for policy in ("ke", "llf", "layerwise"):
    config.generations.policy = policy
    with pytest.raises(ValueError, match=f"policy='{policy}' resets by depth.*no_stages"):
      generations.validate(config)
  config.generations.policy = "dnr"
  generations.validate(config)                        # DNR needs no stages
  config.model.name = "lenet5"
  config.generations.policy = "llf"
  with pytest.raises(ValueError, match=re.escape(
      "config.generations.reset_layer='layer4' is not a stage of model lenet5")):
    generations.validate(config)
  config.generations.reset_layer = "fc1"
  generations.validate(config)
