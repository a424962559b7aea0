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


def _bn_outputs(cls, x, dtype=None, **kwargs):
  """Train-mode output, updated statistics and the gradients of a loss that
  reads the output and (through `mutable`) nothing else, for params and x."""
  bn = cls(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype, **kwargs)
  variables = bn.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.PRNGKey(2), p.shape),
                        variables["params"])
  w = jax.random.normal(jax.random.PRNGKey(3), x.shape)

  def loss(params, x):
    y, stats = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                        mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y.astype(w.dtype)) * w), (y, stats)
  (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
  return y, stats, grads


def _custom_gradient(x, **kwargs) -> bool:
  """Whether fastpath.BatchNorm's train-mode forward uses its custom_vjp."""
  bn = fastpath.BatchNorm(use_running_average=False, **kwargs)
  variables = bn.init(jax.random.PRNGKey(0), x)
  return "custom_vjp" in str(jax.make_jaxpr(
      lambda x: bn.apply(variables, x, mutable=["batch_stats"]))(x))


def test_batch_norm_matches_flax_and_its_float64_gradient(mode):
  """fastpath.BatchNorm's train-mode output and running statistics are
  bit-identical to nn.BatchNorm's; its hand-written gradient equals
  autodiff's in float64 to rounding and in float32 and bf16 to 1e-5."""
  mode("on")
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 5, 5, 8)) * 3 + 1
  for dtype in (None, jnp.bfloat16):
    fast, ref = _bn_outputs(fastpath.BatchNorm, x, dtype), _bn_outputs(nn.BatchNorm, x, dtype)
    assert fast[0].dtype == ref[0].dtype == (dtype or jnp.float32)
    jax.tree.map(np.testing.assert_array_equal, fast[:2], ref[:2])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), fast[2],
                 ref[2])
  with jax.enable_x64(True):
    x64 = x.astype(jnp.float64)
    fast, ref = _bn_outputs(fastpath.BatchNorm, x64), _bn_outputs(nn.BatchNorm, x64)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), fast[2],
               ref[2])
  assert _custom_gradient(x)


def test_batch_norm_gradient_of_its_statistics(mode):
  """The batch mean and variance's own cotangents (a loss that reads them)
  flow into x as autodiff's do."""
  mode("on")
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 2, 4)) + 2
  scale, bias = jnp.linspace(0.5, 2, 4), jnp.linspace(-1, 1, 4)

  def loss(fn, x):
    y, mean, var = fn(x, scale, bias)
    return jnp.sum(y ** 2) + jnp.sum(mean * jnp.arange(4.0)) + jnp.sum(jnp.sqrt(var))

  def autodiff(x, scale, bias):
    mean, var = fastpath._bn_stats(x, (0, 1, 2))
    return fastpath._bn_apply(x, mean, var, scale, bias, 1e-5, jnp.float32)[0], mean, var
  fast = lambda x, s, b: fastpath._batch_norm_train(x, s, b, 1e-5, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(jax.grad(lambda x: loss(fast, x))(x),
                             jax.grad(lambda x: loss(autodiff, x))(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_falls_back_to_flax(mode):
  """Eval mode, another axis and the fast path off run flax's own code."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 5))
  mode("off")
  assert not _custom_gradient(x)
  mode("on")
  assert not _custom_gradient(x, axis=1)
  variables = fastpath.BatchNorm(use_running_average=True).init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(fastpath.BatchNorm(use_running_average=True).apply(variables, x),
                                nn.BatchNorm(use_running_average=True).apply(variables, x))
  assert jax.tree.structure(variables) == jax.tree.structure(
      nn.BatchNorm(use_running_average=False).init(jax.random.PRNGKey(0), x))
