"""Model registry, parameter counts and forward numerics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax import models


def n_params(name, shape=(28, 28, 1), **kw):
  m = models.get_model(name, num_classes=10, **kw)
  v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return sum(x.size for x in jax.tree.leaves(v["params"])), m, v


def count_params(name, shape):
  m = models.get_model(name, num_classes=10)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return sum(x.size for x in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize("name,shape,count", [
    ("lenet5", (28, 28, 1), 431_080),          # Han et al.: 431K
    ("lenet_300_100", (28, 28, 1), 266_610),   # Han et al.: 267K
    ("resnet20", (32, 32, 3), 269_722),        # He et al.: 0.27M
    ("resnet56", (32, 32, 3), 853_018),        # He et al.: 0.85M
    ("resnet110", (32, 32, 3), 1_727_962),     # He et al.: 1.7M
])
def test_param_counts(name, shape, count):
  assert count_params(name, shape) == count


def test_lenet300_forward_is_the_mlp():
  _, model, v = n_params("lenet_300_100")
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  p = jax.tree.map(np.asarray, v["params"])
  h = x.reshape(4, -1).astype(np.float64)
  for i, layer in enumerate(["fc1", "fc2", "fc3"]):
    h = h @ p[layer]["kernel"] + p[layer]["bias"]
    if i < 2:
      h = np.maximum(h, 0)
  chex.assert_trees_all_close(jax.jit(model.apply)(v, x), h.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_torch_default_init_bounds():
  _, _, v = n_params("lenet5")
  kernel = np.asarray(v["params"]["conv1"]["kernel"])
  chex.assert_shape(kernel, (5, 5, 1, 20))
  bound = 1 / np.sqrt(25)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


@pytest.mark.parametrize("fc_init,std", [("torch_default", 1 / np.sqrt(3 * 64)),
                                         ("kaiming_normal", np.sqrt(2 / 64))])
def test_the_resnet_fc_init_option(fc_init, std):
  # The DNR/KE/LLF code's Split_ResNet18 draws its fc N(0, 2/fan_in); the bias
  # stays nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) either way.
  m = models.get_model("resnet18", num_classes=500, stem="small", width=8, fc_init=fc_init)
  fc = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]["fc"]
  kernel, bias = np.asarray(fc["kernel"]), np.asarray(fc["bias"])   # [64, 500]: 32,000 draws
  assert abs(kernel.std() / std - 1) < 5 / np.sqrt(2 * kernel.size)
  assert np.abs(bias).max() <= 1 / np.sqrt(64) and np.abs(bias).max() > 0.9 / np.sqrt(64)
  with pytest.raises(ValueError, match=r"config.model.fc_init='kaiming'.*torch_default, "
                                       r"kaiming_normal"):
    models.get_model("resnet18", num_classes=10, fc_init="kaiming")


def test_resnet_batch_stats_and_shapes():
  m = models.get_model("resnet20", num_classes=7)
  v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert "batch_stats" in v
  apply = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
  logits, upd = apply(v, jnp.ones((2, 32, 32, 3)))
  chex.assert_shape(logits, (2, 7))
  # Training updates the running statistics (momentum 0.9, as PyTorch's 0.1).
  before = v["batch_stats"]["bn1"]["mean"]
  after = upd["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(before, after)


def test_bf16_compute_f32_params():
  m = models.get_model("lenet5", num_classes=10, dtype="bfloat16")
  v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
  assert jax.jit(m.apply)(v, jnp.ones((2, 28, 28, 1))).dtype == jnp.bfloat16


def test_unknown_model_and_option_errors():
  with pytest.raises(ValueError, match=r"model.name='resnet21'.*lenet5.*resnet20"):
    models.get_model("resnet21", num_classes=10)
  with pytest.raises(ValueError, match=r"config.model.widht.*options are: block_widths, variant, width"):
    models.get_model("resnet20", num_classes=10, widht=2)


@pytest.mark.parametrize("depth,count", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032),
                                         (101, 44_549_160), (152, 60_192_808)])
def test_imagenet_resnet_param_counts_equal_torchvision(depth, count):
  m = models.get_model(f"resnet{depth}", num_classes=1000)
  v = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, 224, 224, 3))), jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(v["params"])) == count
  assert jax.eval_shape(lambda v: m.apply(v, jnp.zeros((2, 224, 224, 3))), v).shape == (2, 1000)


def test_resnet18_small_stem_keeps_resolution_for_28px():
  m = models.get_model("resnet18", num_classes=10, stem="small")
  v = jax.eval_shape(lambda k: m.init(k, jnp.zeros((1, 28, 28, 1))), jax.random.PRNGKey(0))
  chex.assert_shape(v["params"]["conv1"]["kernel"], (3, 3, 1, 64))
  _, inter = jax.eval_shape(lambda v: m.apply(v, jnp.zeros((2, 28, 28, 1)),
                                              capture_intermediates=True,
                                              mutable=["intermediates"]),
                            v)
  # 28 -> 28 (no stride, no pool) -> 28, 14, 7, 4 through the four stages
  assert [inter["intermediates"][f"layer{i}_0"]["__call__"][0].shape[1] for i in (1, 2, 3, 4)] == \
      [28, 14, 7, 4]
  with pytest.raises(ValueError, match="config.model.stem='tiny'.*imagenet, small"):
    models.get_model("resnet18", num_classes=10, stem="tiny")


def _count(name, shape=(32, 32, 3), **options):
  m = models.get_model(name, num_classes=10, **options)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return sum(x.size for x in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
@pytest.mark.parametrize("variant", ["he", "dit_code"])
def test_dit_resnets_add_33280_params_at_any_depth(depth, variant):
  # 32^3 (Q) + 2 x 16 x 16 (the LN_hw affine) at 32 px.
  assert (_count(f"dit_resnet{depth}", variant=variant)
          - _count(f"resnet{depth}", variant=variant)) == 33_280


def test_the_dit_code_variant_has_option_b_shortcuts_and_a_256d_head():
  # Two 1x1 shortcut convs (16->32, 32->64) with BN, and a 256 -> 10 fc
  # instead of 64 -> 10: 2,560 + 192 + 1,920 more than He et al.'s 269,722.
  assert _count("resnet20", variant="dit_code") == 269_722 + 2_560 + 192 + 1_920
  m = models.get_model("dit_resnet20", num_classes=10, variant="dit_code")
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert v["params"]["fc"]["kernel"].shape == (256, 10)
  block = v["params"]["stage2_block0"]
  assert block["quadratic"]["q"].shape == (32, 32, 32)
  assert block["ln_hw"]["scale"].shape == (16, 16)
  assert "downsample_conv" in block and "quadratic" not in v["params"]["stage2_block1"]
  with pytest.raises(ValueError, match="variant='b' is not valid; choose one of: he, dit_code"):
    models.get_model("resnet20", num_classes=10, variant="b")


def test_the_dit_block_starts_as_half_the_plain_block_and_q_learns():
  """With Q = 0 at init, the Dit block's residual branch is bn2(conv2(h)) / 2;
  Q gets a nonzero gradient (it is not stuck at its zero init)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  dit = models.get_model("dit_resnet20", num_classes=10)
  plain = models.get_model("resnet20", num_classes=10)
  v = dit.init(jax.random.PRNGKey(0), x)
  # The plain model with the Dit model's shared weights, and its stage2_block0
  # bn2 scale and bias halved, computes the same function while Q = 0.
  p = jax.tree.map(lambda a: a, v["params"])
  for leaf in ("quadratic", "ln_hw"):
    del p["stage2_block0"][leaf]
  p["stage2_block0"]["bn2"] = jax.tree.map(lambda a: a / 2, p["stage2_block0"]["bn2"])
  chex.assert_trees_all_close(dit.apply(v, x), plain.apply({**v, "params": p}, x),
                              rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda params: jnp.sum(dit.apply({**v, "params": params}, x) ** 2))(
      v["params"])
  assert float(jnp.abs(grad["stage2_block0"]["quadratic"]["q"]).max()) > 0


def test_dit_resnet_in_bf16_keeps_f32_params_and_tracks_f32():
  """bf16 compute (config.compute_dtype) through the quadratic term and
  LN_hw, with Q nonzero: logits are bf16, close to the f32 model's."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  f32, bf16 = (models.get_model("dit_resnet20", num_classes=10, dtype=d)
               for d in ("float32", "bfloat16"))
  v = f32.init(jax.random.PRNGKey(0), x)
  q = v["params"]["stage2_block0"]["quadratic"]["q"]
  v["params"]["stage2_block0"]["quadratic"]["q"] = 0.05 * jax.random.normal(
      jax.random.PRNGKey(1), q.shape)
  assert jax.tree.leaves(bf16.init(jax.random.PRNGKey(0), x))[0].dtype == jnp.float32
  want, got = f32.apply(v, x), bf16.apply(v, x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05 *
                             float(jnp.abs(want).max()))
