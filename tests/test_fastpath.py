"""The XLA:CPU fast path (neurojax.nn.fastpath): the same values and
gradients as Flax's ops, and the XLA flags it sets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neurojax import models
from neurojax.nn import fastpath
from neurojax.nn.bayes import Bayesian
from neurojax.train import steps
from neurojax.train.state import create_train_state


@pytest.fixture
def mode():
  """Restores the fast-path mode (and XLA_FLAGS) after a test."""
  before = fastpath._mode
  yield fastpath.set_mode
  fastpath.set_mode(before)


@pytest.mark.parametrize("window,shape", [((2, 2), (3, 8, 6, 5)), ((3, 3), (2, 9, 6, 4))])
def test_max_pool_matches_flax_with_ties(mode, window, shape):
  """Forward and gradient bit-identical to nn.max_pool's, ties included
  (small integers: most windows hold a repeated maximum)."""
  mode("on")
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), shape) * 1.5)
  w = jax.random.normal(jax.random.PRNGKey(1), (shape[0], shape[1] // window[0],
                                                shape[2] // window[1], shape[3]))

  def loss(pool, x):
    return jnp.sum(pool(x) * w)
  fast = lambda x: fastpath.max_pool(x, window, window)
  ref = lambda x: nn.max_pool(x, window, strides=window)
  np.testing.assert_array_equal(fast(x), ref(x))
  g_fast, g_ref = jax.grad(lambda x: loss(fast, x))(x), jax.grad(lambda x: loss(ref, x))(x)
  np.testing.assert_array_equal(g_fast, g_ref)
  assert int(jnp.sum(g_fast != 0)) == w.size       # one winner per window
  assert jax.make_jaxpr(fast)(x).eqns[0].primitive.name == "custom_vjp_call"


def test_max_pool_falls_back_where_windows_overlap_or_pad(mode):
  mode("on")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 3))
  for args in [((3, 3), (2, 2), "VALID"), ((2, 2), (2, 2), [(1, 1), (1, 1)]),
               ((2, 2), (2, 2), "VALID")]:      # 7 is not a multiple of 2
    np.testing.assert_array_equal(fastpath.max_pool(x, *args),
                                  nn.max_pool(x, args[0], strides=args[1], padding=args[2]))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda x: fastpath.max_pool(x, *args))(x))


def test_lenet5_step_is_the_same_with_and_without_the_fast_path(mode):
  """One SGD step of LeNet-5, traced with the fast path on and off, gives
  bit-identical params; compiled with its XLA:CPU options, the same to 1e-4."""
  model = models.get_model("lenet5", num_classes=10)
  tx = optax.sgd(0.1, momentum=0.9)
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1)),
           "label": jnp.arange(16) % 10}
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28, 1))
  out = {}
  for m in ("on", "off"):
    mode(m)
    out[m] = jax.jit(steps.train_step_fn(model, tx))(state, batch)
  jax.tree.map(np.testing.assert_array_equal, out["on"], out["off"])
  # With its compile options (Eigen convs): another summation order only.
  mode("on")
  eigen = jax.jit(steps.train_step_fn(model, tx),
                  compiler_options=fastpath.compiler_options(model))(state, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               eigen, out["on"])


def test_modes_and_compiler_options(mode):
  mode("on")
  assert fastpath.enabled()
  lenet, cifar, imagenet = (models.get_model(n, num_classes=10)
                            for n in ("lenet5", "resnet20", "resnet18"))
  assert fastpath.compiler_options(lenet) == fastpath.EIGEN_CONVS
  assert fastpath.compiler_options(cifar) == fastpath.EIGEN_CONVS
  assert fastpath.compiler_options(imagenet) is None     # see fastpath's docstring
  assert fastpath.compiler_options(Bayesian(lenet)) == fastpath.EIGEN_CONVS  # passed on
  mode("off")
  assert not fastpath.enabled() and fastpath.compiler_options(lenet) is None
  mode("auto")
  assert fastpath.enabled() == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="fastpath mode 'fast' is not valid; use one of auto, on, off"):
    fastpath.set_mode("fast")
