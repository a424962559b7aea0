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
  with pytest.raises(ValueError, match=r"config.model.widht.*options are: block_widths, width"):
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
