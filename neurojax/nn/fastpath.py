"""Layer formulations chosen for XLA:CPU, behind the same modules.

XLA:CPU lowers some layers' gradients far slower than the same arithmetic
written another way: a 2x2 max-pool's gradient (select-and-scatter) took
half of LeNet-5's train step. The models call the functions here instead of
`flax.linen`'s; where the fast path applies they compute the same values in
a form XLA:CPU runs well, and elsewhere they are Flax's own ops.

On by default on CPU (`jax.default_backend() == "cpu"`); GPU and TPU keep
XLA's native ops. `NEUROJAX_FASTPATH=on|off|auto` (read at import) or
`set_mode` change that. The choice is made when a function is traced: set
it before the first step is compiled.

- `max_pool` with window == stride and no padding: a reshape and a max. Its
  gradient goes to the first maximum of each window in row-major order, as
  `lax.reduce_window`'s does, so the gradients are bit-identical.
- `BatchNorm`: `flax.linen.BatchNorm` with a one-pass `jax.custom_vjp`
  gradient in training (forward and statistics bit-identical to flax's).
- XLA:CPU compile options a model asks for (its class's `xla_cpu_options`,
  given to the jitted train and eval steps by `compiler_options(model)`):
  LeNet-5 and the CIFAR ResNets have their convolutions compiled to XLA's
  Eigen kernels instead of YNNPACK's (`EIGEN_CONVS`): LeNet-5's step 1.8x,
  ResNet-20's 1.3x and ResNet-110's 3x faster here. Not a global default:
  on this jax (0.10.2) the same option makes the ImageNet ResNet-101/152's
  forward at 64 px run for minutes (YNNPACK: 0.1 s).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

_MODES = ("auto", "on", "off")
_mode = os.environ.get("NEUROJAX_FASTPATH", "auto").lower()
if _mode not in _MODES:
  raise ValueError(f"NEUROJAX_FASTPATH={_mode!r} is not valid; use one of {', '.join(_MODES)}")


# All of YNNPACK's fusion types but INDIVIDUAL_CONVOLUTION: dots,
# reductions and elementwise fusions stay on YNNPACK.
EIGEN_CONVS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
    f"LIBRARY_FUSION_TYPE_{t}" for t in ("INDIVIDUAL_DOT", "REDUCE", "ELTWISE"))}


def compiler_options(model) -> dict | None:
  """The XLA compile options for `model`'s jitted steps: its
  `xla_cpu_options` (a class attribute; wrappers that pass attributes on to
  the model they wrap, such as `nn.bayes.Bayesian`, have its) on the fast
  path when the default backend is the CPU, else None (XLA's defaults)."""
  options = getattr(model, "xla_cpu_options", None)
  return dict(options) if options and enabled() and jax.default_backend() == "cpu" else None


def set_mode(mode: str) -> None:
  """"auto" (on when the default backend is the CPU), "on" or "off"; it
  applies to the functions traced from then on."""
  global _mode
  if mode not in _MODES:
    raise ValueError(f"fastpath mode {mode!r} is not valid; use one of {', '.join(_MODES)}")
  _mode = mode


def enabled() -> bool:
  return _mode == "on" or (_mode == "auto" and jax.default_backend() == "cpu")


def _tiles(x, window):
  """NHWC -> (N, H/wh, wh, W/ww, ww, C)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // window[0], window[0], w // window[1], window[1], c)


def _window_max(x, window):
  return jnp.max(_tiles(x, window), axis=(2, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x, window):
  return _window_max(x, window)


def _tiled_max_pool_fwd(x, window):
  y = _window_max(x, window)
  return y, (x, y)


def _tiled_max_pool_bwd(window, res, g):
  x, y = res
  wh, ww = window
  # Each element's row-major position in its window; the gradient goes to
  # the lowest position holding the maximum (select-and-scatter's choice).
  position = (jnp.arange(wh)[:, None] * ww + jnp.arange(ww)[None, :]).reshape(1, 1, wh, 1, ww, 1)
  at_max = _tiles(x, window) == y[:, :, None, :, None, :]
  first = jnp.min(jnp.where(at_max, position, wh * ww), axis=(2, 4), keepdims=True)
  dx = jnp.where(position == first, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  return (dx.reshape(x.shape),)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def _tiles_exactly(x, window, strides, padding) -> bool:
  no_padding = padding == "VALID" or all(tuple(p) == (0, 0) for p in padding)
  return (x.ndim == 4 and tuple(strides) == tuple(window) and no_padding
          and x.shape[1] % window[0] == 0 and x.shape[2] % window[1] == 0)


def max_pool(x, window, strides=None, padding="VALID"):
  """`flax.linen.max_pool` on NHWC inputs; a reshape + max on the fast path."""
  window = tuple(window)
  strides = window if strides is None else tuple(strides)
  if enabled() and _tiles_exactly(x, window, strides, padding):
    return _tiled_max_pool(x, window)
  return nn.max_pool(x, window, strides=strides, padding=padding)



# ------------------------------------------------------------ BatchNorm


def _bn_stats(x, axes):
  """flax's: float32 mean and E[x^2] in one pass, var = max(0, E[x^2] - mean^2)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, mean2 = jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)
  return mean, jnp.maximum(0.0, mean2 - jnp.square(mean))


def _bn_apply(x, mean, var, scale, bias, epsilon, dtype):
  """flax's `_normalize`, op for op: (x - mean) * (rsqrt(var + eps) * scale) + bias."""
  mul = jax.lax.rsqrt(var + epsilon) * scale
  return jnp.asarray((x - mean) * mul + bias, dtype), mul


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, epsilon, dtype):
  """(y, batch mean, batch var) of train-mode BatchNorm over the last axis."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon, dtype)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon, dtype):
  axes = tuple(range(x.ndim - 1))
  mean, var = _bn_stats(x, axes)
  y, mul = _bn_apply(x, mean, var, scale, bias, epsilon, dtype)
  return (y, mean, var), (x, mean, var, scale, mul)


def _batch_norm_train_bwd(epsilon, dtype, res, cotangents):
  """One reduction pass (sum g, sum g * xhat) and one elementwise pass, where
  autodiff of the forward makes several. With xhat = (x - mean) * inv:
  dbias = sum g, dscale = sum g xhat, and
  dx = scale inv (g - dbias / N - xhat dscale / N) + dmean / N + dvar 2 (x - mean) / N
  (the last two for the batch statistics' own cotangents, zero in training)."""
  del dtype
  x, mean, var, scale, mul = res
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  f32 = jnp.promote_types(x.dtype, jnp.float32)
  g32, centred = g.astype(f32), x.astype(f32) - mean
  inv = jax.lax.rsqrt(var + epsilon)
  dbias = jnp.sum(g32, axes)
  dscale = jnp.sum(g32 * centred, axes) * inv
  dx = (mul * (g32 - dbias / n - centred * (inv * dscale / n))
        + g_mean / n + centred * (2.0 * g_var / n))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` (same params, statistics and forward values); on
  the fast path, training over the last axis has a hand-written gradient:
  XLA:CPU runs autodiff's several passes over the activations slowly."""

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None):
    given = use_running_average
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    plain = (self.axis in (-1, x.ndim - 1) and self.axis_name is None and mask is None
             and self.use_bias and self.use_scale and self.use_fast_variance
             and self.force_float32_reductions)
    if use_running_average or not plain or not enabled() or self.is_initializing():
      return super().__call__(x, given, mask=mask)
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, dtype)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
