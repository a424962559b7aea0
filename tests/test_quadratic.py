"""neurojax.nn.quadratic: the Dit quadratic term and the spatial LayerNorm."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax.nn.quadratic import Quadratic, SpatialLayerNorm, quadratic, quadratic_naive


def _inputs(shape=(2, 5, 4, 6), c_out=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape), rng.standard_normal((c_out, shape[-1], shape[-1]))


@pytest.mark.parametrize("max_elements", [1, 7 * 3 * 6, 1 << 22])
def test_matches_a_float64_einsum_of_the_definition(max_elements):
  x, q = _inputs()
  expected = np.einsum("bhwi,oij,bhwj->bhwo", x, q, x)            # float64
  got = quadratic(jnp.asarray(x, jnp.float32), jnp.asarray(q, jnp.float32), max_elements)
  chex.assert_shape(got, (2, 5, 4, 3))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_outer_product_version():
  x, q = _inputs(seed=1)
  x, q = jnp.asarray(x, jnp.float32), jnp.asarray(q, jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 4, 3)), jnp.float32)
  loss = lambda f: lambda x, q: jnp.sum(w * f(x, q))  # noqa: E731
  ours = jax.grad(loss(lambda x, q: quadratic(x, q, max_elements=18)), argnums=(0, 1))(x, q)
  naive = jax.grad(loss(quadratic_naive), argnums=(0, 1))(x, q)
  chex.assert_trees_all_close(ours, naive, rtol=1e-5, atol=1e-5)


def test_the_layer_starts_at_zero_and_counts_c_cubed_params():
  layer = Quadratic(32)
  x = jnp.ones((1, 16, 16, 32))
  params = layer.init(jax.random.PRNGKey(0), x)
  assert params["params"]["q"].shape == (32, 32, 32)
  assert not np.any(np.asarray(params["params"]["q"]))
  assert not np.any(np.asarray(layer.apply(params, x)))
  ln = SpatialLayerNorm().init(jax.random.PRNGKey(0), x)
  # The Dit-ResNet overhead: 32^3 + the [16, 16] LN affine twice = 33,280.
  assert sum(p.size for p in jax.tree.leaves((params, ln))) == 33_280


def test_spatial_layer_norm_normalises_over_h_and_w_with_an_hw_affine():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 4, 3, 5)) * 3 + 1
  scale, bias = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  expected = (x - mean) / np.sqrt(var + 1e-5) * scale[None, :, :, None] + bias[None, :, :, None]
  got = SpatialLayerNorm().apply({"params": {"scale": scale, "bias": bias}},
                                 jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_memory_stays_bounded_where_the_outer_product_does_not():
  """Compiled forward + backward scratch at C=96, 28x28, batch 8 (the outer
  product would be 8 x 28 x 28 x 96^2 floats = 231 MB)."""
  x = jax.ShapeDtypeStruct((8, 28, 28, 96), jnp.float32)
  q = jax.ShapeDtypeStruct((96, 96, 96), jnp.float32)

  def scratch(f):
    grad = jax.grad(lambda x, q: jnp.sum(f(x, q)), argnums=(0, 1))
    return jax.jit(grad).lower(x, q).compile().memory_analysis().temp_size_in_bytes
  ours, naive = scratch(quadratic), scratch(quadratic_naive)
  assert ours < 100e6, ours               # 48 MB when measured
  assert naive > 10 * ours, (naive, ours)  # 696 MB
