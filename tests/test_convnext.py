"""ConvNeXt-T/S/B and Dit-ConvNeXt: param counts, torchvision numerics, DropPath."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax import models
from neurojax.models import convnext
from neurojax.models.layers import DropPath
from neurojax.nn.quadratic import quadratic_naive

TORCHVISION_COUNTS = {"tiny": 28_589_128, "small": 50_223_688, "base": 88_591_464}
X = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def abstract_params(name, **kw):
  m = models.get_model(name, num_classes=1000, **kw)
  return jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_param_counts_equal_torchvision(size):
  n = count(abstract_params(f"convnext_{size}"))
  assert n == TORCHVISION_COUNTS[size]
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  with torch.device("meta"):        # shapes only, no init
    tv = getattr(torchvision.models, f"convnext_{size}")()
  assert n == sum(p.numel() for p in tv.parameters())


@pytest.mark.parametrize("size,c", [("tiny", 96), ("small", 96), ("base", 128)])
def test_dit_adds_exactly_c_cubed(size, c):
  plain, dit = abstract_params(f"convnext_{size}"), abstract_params(f"dit_convnext_{size}")
  assert count(dit) - count(plain) == c**3
  assert dit["stages_0_blocks_2"]["quadratic"]["q"].shape == (c, c, c)
  assert [k for k in dit if "quadratic" in dit[k]] == ["stages_0_blocks_2"]


def _randomised_torchvision_tiny():
  """A torchvision convnext_tiny with every param random and O(1) (the
  default layer scale 1e-6 would hide the blocks)."""
  pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from torch_helpers import randomise  # pylint: disable=g-import-not-at-top
  return randomise(torchvision.models.convnext_tiny())


def test_logits_match_torchvision_convnext_tiny():
  torch = pytest.importorskip("torch")
  tv = _randomised_torchvision_tiny()
  from neurojax.convert import torchvision as convert  # pylint: disable=g-import-not-at-top
  model = models.get_model("convnext_tiny", num_classes=1000)
  params = convert.convert_state_dict(tv.state_dict(), model, (64, 64, 3),
                                      arch="convnext_tiny")["params"]
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)  # 2x2 at the end
  with torch.no_grad():
    expected = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  logits = jax.jit(model.apply)({"params": params}, x)
  assert np.abs(expected).max() > 1.0            # not a trivially small output
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def _small(dit, **kw):
  return convnext.ConvNeXt(depths=(3, 1, 1, 1), dims=(8, 16, 16, 16), num_classes=5,
                           dit=dit, **kw)


def _random_params(model, seed=0):
  """O(1) random params for `model` (kernels ~ N(0, 1/fan_in), layer scale
  1, Q 0), so every block matters; no init is compiled."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), X)["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "q":
      return np.zeros(s.shape, np.float32)
    if name == "gamma":
      return np.ones(s.shape, np.float32)
    if name == "kernel":
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return ((name == "scale") + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_dit_with_zero_q_is_the_plain_model_and_q_learns():
  dit, plain = _small(True), _small(False)
  dit_apply, plain_apply = jax.jit(dit.apply), jax.jit(plain.apply)
  params = _random_params(dit)
  without_q = {**params, "stages_0_blocks_2": {
      k: a for k, a in params["stages_0_blocks_2"].items() if k != "quadratic"}}
  expected = plain_apply({"params": without_q}, X)
  assert np.abs(expected).max() > 0.5           # the logits are not tiny
  chex.assert_trees_all_close(dit_apply({"params": params}, X), expected, rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(dit.apply({"params": p}, X) ** 2)))(params)
  assert float(jnp.abs(grad["stages_0_blocks_2"]["quadratic"]["q"]).max()) > 1e-3
  # ... and a nonzero Q changes the output.
  q = params["stages_0_blocks_2"]["quadratic"]["q"]
  params["stages_0_blocks_2"]["quadratic"]["q"] = 0.1 * jax.random.normal(
      jax.random.PRNGKey(1), q.shape)
  assert not np.allclose(dit_apply({"params": params}, X), expected, atol=1e-2)


def test_dit_block_adds_q_of_the_raw_input_to_the_dwconv():
  """The Dit block against a hand-written one: Q(x) on the raw input, before LN."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 8)), jnp.float32)
  block = convnext.Block(dit=True)
  p = block.init(jax.random.PRNGKey(0), x, train=False)["params"]
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 20))
  p = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape) * 0.3, p)
  h = jax.lax.conv_general_dilated(x, p["conv_dw"]["kernel"], (1, 1), [(3, 3), (3, 3)],
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=8) + p["conv_dw"]["bias"]
  h = h + quadratic_naive(x, p["quadratic"]["q"])
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = (h - mean) / jnp.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
  h = jax.nn.gelu(h @ p["mlp_fc1"]["kernel"] + p["mlp_fc1"]["bias"], approximate=False)
  h = h @ p["mlp_fc2"]["kernel"] + p["mlp_fc2"]["bias"]
  chex.assert_trees_all_close(block.apply({"params": p}, x, train=False), x + p["gamma"] * h,
                              rtol=1e-5, atol=1e-5)


def test_backbone_dtype_and_options():
  assert models.is_backbone("convnext_tiny") and models.is_backbone("dit_convnext_base")
  assert models.default_options("dit_convnext_small") == {"drop_path": 0.0}
  m = models.get_model("convnext_tiny", num_classes=0, dtype="bfloat16")
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
  out = jax.eval_shape(m.apply, v, jnp.zeros((2, 32, 32, 3)))
  assert out.shape == (2, 768) and out.dtype == jnp.bfloat16
  assert "head_fc" not in v["params"] and "head_norm" in v["params"]
  with pytest.raises(ValueError, match=r"config.model.drop_path=1.5 must be in \[0, 1\)"):
    models.get_model("convnext_tiny", num_classes=10, drop_path=1.5)


def test_drop_path_rates_rise_linearly_over_all_blocks():
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath):
      rates.append(context.module.rate)
    return next_fun(*args, **kwargs)

  m = models.get_model("convnext_tiny", num_classes=10, drop_path=0.3)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  np.testing.assert_allclose(rates, np.linspace(0, 0.3, 18), atol=1e-7)


def test_drop_path_in_training_uses_the_dropout_stream():
  m = _small(False, drop_path=0.5)
  v = {"params": _random_params(m)}
  apply = jax.jit(m.apply, static_argnames="train")
  train = lambda k: apply(v, X, train=True, rngs={"dropout": jax.random.PRNGKey(k)})
  chex.assert_trees_all_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2), atol=1e-3)
  assert not np.allclose(train(1), apply(v, X), atol=1e-3)


def test_drop_path_layer():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4000, 3, 5)) + 3.0, jnp.float32)
  layer = DropPath(0.3)
  chex.assert_trees_all_equal(layer.apply({}, x, train=False), x)
  chex.assert_trees_all_equal(DropPath(0.0).apply({}, x, train=True), x)   # no rng needed
  y = layer.apply({}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
  dropped = np.all(np.asarray(y) == 0, axis=(1, 2))
  kept = np.all(np.isclose(y, x / 0.7, rtol=1e-6), axis=(1, 2))
  assert np.all(dropped | kept)                 # each example: all zeros or x / (1 - rate)
  assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
  y2 = layer.apply({}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.array_equal(y, y2)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_imagenet_recipe_decays_exactly_the_weights_timm_decays(size):
  """The configs' weight_decay_exclude spares exactly what timm's rule does
  (every 1-D param: biases, LayerNorm scales, layer scale), and decays Q."""
  from neurojax.config import load_config_file  # pylint: disable=g-import-not-at-top
  from neurojax.train.optimizers import decay_mask  # pylint: disable=g-import-not-at-top
  from tests.cli import ROOT  # pylint: disable=g-import-not-at-top
  config = load_config_file(f"{ROOT}/configs/dit_convnext_{size}_imagenet.py")
  params = abstract_params(config.model.name)
  decayed = decay_mask(params, config.optimizer.weight_decay_exclude)(params)
  chex.assert_trees_all_equal(decayed, jax.tree.map(lambda p: p.ndim > 1, params))
  assert decayed["stages_0_blocks_2"]["quadratic"]["q"]


def test_converting_a_bad_convnext_state_dict_names_the_key():
  pytest.importorskip("torchvision")
  from neurojax.convert import torchvision as convert  # pylint: disable=g-import-not-at-top
  state = _randomised_torchvision_tiny().state_dict()
  model = models.get_model("convnext_tiny", num_classes=1000)
  renamed = dict(state)
  renamed["features.1.0.block.9.weight"] = renamed.pop("features.1.0.block.5.weight")
  with pytest.raises(convert.ConversionError, match=r"unexpected key\(s\).*features.1.0.block.9"):
    convert.convert_state_dict(renamed, model, (64, 64, 3), arch="convnext_tiny")
  missing = {k: v for k, v in state.items() if k != "features.1.2.layer_scale"}
  with pytest.raises(convert.ConversionError, match="missing.*stages_0_blocks_2.gamma"):
    convert.convert_state_dict(missing, model, (64, 64, 3), arch="convnext_tiny")
