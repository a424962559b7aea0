"""Mean-field Gaussian weights (Bayes by Backprop; Blundell et al., ICML
2015), as layers and as a converter for any model.

Each weight w of a Bayesian Dense or Conv has a posterior N(mu, sigma^2),
sigma = softplus(rho). The layer keeps mu where the deterministic layer
keeps its weight (`kernel`, `bias`) and rho beside it (`kernel_rho`,
`bias_rho`), so a deterministic checkpoint's weights are the means as they
are (MOPED) and the mean network is the deterministic model. Estimators of
the layer's output under the posterior, drawing from the "sample" RNG
stream (one weight draw per batch; no "sample" key: the mean weights):

    reparam  w = mu + sigma * eps, eps ~ N(0, 1), y = layer(x; w)   (Blundell)
    flipout  y = layer(x; mu) + layer(x * s_in; sigma * eps) * s_out, with
             per-example random signs s_in, s_out (Wen et al. 2018): the
             same mean, less variance across a batch
    local    y = layer(x; mu) + sqrt(layer(x^2; sigma^2)) * eps_out, one
             normal per output unit and example (Kingma et al. 2015; exact
             for Dense, the usual independence approximation for convs)

Priors and the KL(q || p) each layer adds to the "kl" collection (summed
over its weights; the objective divides the total by N_train):

    gaussian  N(0, sigma_p^2): closed form
    mixture   pi N(0, s1^2) + (1 - pi) N(0, s2^2) (pi 0.5, s1 e^-1, s2 e^-6):
              log q(w) - log p(w) on the weights drawn (for `local`, which
              draws no weights, one extra draw)
    moped     N(w0, (delta |w0|)^2), w0 the deterministic weights (Krishnan
              et al., AAAI 2020), kept in the layer's `batch_stats`
              (`kernel_prior`, `bias_prior`: state that is not trained):
              closed form; delta |w0| is floored at `min_prior_sigma`

`BayesDense` and `BayesConv` are the layers; `to_bayesian(model, x,
layers=regex, last=k)` (or `Bayesian(model, paths)`) makes the Dense and
Conv modules at those paths of any model Bayesian without changing the
model's code (an interceptor), BatchNorm and the rest as they are. Its
output is {"logits": ..., "kl": the summed KL}.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

ESTIMATORS = ("reparam", "flipout", "local")
PRIORS = ("mixture", "gaussian", "moped")
STREAM = "sample"


@dataclasses.dataclass(frozen=True)
class Posterior:
  """How a Bayesian layer draws and what prior it is held to."""
  estimator: str = "reparam"
  prior: str = "mixture"
  pi: float = 0.5
  sigma1: float = math.exp(-1)
  sigma2: float = math.exp(-6)
  prior_sigma: float = 1.0              # gaussian
  delta: float = 0.1                    # moped: the prior's sigma is delta * |w0|
  min_prior_sigma: float = 1e-6         # moped: and at least this
  rho_init: tuple[float, float] = (-5.0, -4.0)   # rho ~ U(lo, hi)

  def __post_init__(self):
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"estimator={self.estimator!r}: choose one of {', '.join(ESTIMATORS)}")
    if self.prior not in PRIORS:
      raise ValueError(f"prior={self.prior!r}: choose one of {', '.join(PRIORS)}")


def softplus_inverse(sigma):
  """rho with softplus(rho) = sigma (sigma > 0)."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return sigma + jnp.log(-jnp.expm1(-sigma))


def gaussian_kl(mu_q, sigma_q, mu_p, sigma_p):
  """sum KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), elementwise then summed."""
  return jnp.sum(jnp.log(sigma_p / sigma_q)
                 + (sigma_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sigma_p ** 2) - 0.5)


def gaussian_log_prob(w, mu, sigma):
  return jnp.sum(-0.5 * ((w - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi))


def mixture_log_prob(w, pi: float, sigma1: float, sigma2: float):
  """sum log(pi N(w; 0, s1^2) + (1 - pi) N(w; 0, s2^2)), stable for tiny s2."""
  def log_normal(s):
    return -0.5 * (w / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
  return jnp.sum(jnp.logaddexp(math.log(pi) + log_normal(sigma1),
                               math.log(1 - pi) + log_normal(sigma2)))


def uniform(low: float, high: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)
  return init


def _plain(module):
  """The layer's own computation without a bias, as an unbound module: the
  deterministic layer's op for any kernel (strides, padding, dtype)."""
  base = nn.Conv if isinstance(module, nn.Conv) else nn.Dense
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(base)
            if f.init and f.name not in ("parent", "name")}
  return base(**dict(fields, use_bias=False))


def _signs(key, x_shape, channels: int):
  """Random +-1 per example and channel, broadcast over the other axes."""
  shape = (x_shape[0],) + (1,) * (len(x_shape) - 2) + (channels,)
  return jax.random.rademacher(key, shape, jnp.float32)


def bayesian_call(module, mean_call, x, posterior: Posterior):
  """The output of `module` (a bound nn.Dense or nn.Conv, whose `kernel`
  and `bias` are the means) under its posterior; `mean_call(x)` is its own
  call. Creates the rho params (and the MOPED prior centre) beside the
  means, and adds the KL to the "kl" collection when it draws."""
  if module.is_initializing() or not module.has_rng(STREAM):
    y = mean_call(x)
  else:
    y = None
  means = {n: v for n, v in module.variables["params"].items() if n in ("kernel", "bias")}
  rho = {n: module.param(f"{n}_rho", uniform(*posterior.rho_init), v.shape, jnp.float32)
         for n, v in means.items()}
  centre = ({n: module.variable("batch_stats", f"{n}_prior", jnp.zeros, v.shape,
                                jnp.float32).value for n, v in means.items()}
            if posterior.prior == "moped" else None)
  if y is not None:                        # the mean weights (init, or no "sample" key)
    return y
  sigma = {n: jax.nn.softplus(r) for n, r in rho.items()}
  key = module.make_rng(STREAM)
  k_eps, k_in, k_out, k_kl = jax.random.split(key, 4)
  eps = {n: jax.random.normal(jax.random.fold_in(k_eps, i), v.shape, jnp.float32)
         for i, (n, v) in enumerate(sorted(means.items()))}
  delta = {n: sigma[n] * eps[n] for n in means}       # this batch's weight draw - mu
  plain = _plain(module)
  op = lambda inputs, kernel: plain.apply({"params": {"kernel": kernel}}, inputs)
  n_in, n_out = means["kernel"].shape[-2], means["kernel"].shape[-1]
  if posterior.estimator == "reparam":
    y = op(x, means["kernel"] + delta["kernel"])
    if "bias" in means:
      y = y + (means["bias"] + delta["bias"]).astype(y.dtype)
  else:
    y = mean_call(x)
    if posterior.estimator == "flipout":
      s_in, s_out = _signs(k_in, x.shape, n_in), _signs(k_out, y.shape, n_out)
      noise = op(x * s_in.astype(x.dtype), delta["kernel"])
      if "bias" in means:
        noise = noise + delta["bias"].astype(noise.dtype)
      y = y + noise * s_out.astype(y.dtype)
    else:                                  # local reparameterisation
      var = op(jnp.square(x), jnp.square(sigma["kernel"]))
      if "bias" in means:
        var = var + jnp.square(sigma["bias"]).astype(var.dtype)
      y = y + jnp.sqrt(jnp.maximum(var, 0)) * jax.random.normal(k_out, y.shape, y.dtype)
      # no weight was drawn: one draw for a Monte-Carlo KL
      delta = {n: sigma[n] * jax.random.normal(jax.random.fold_in(k_kl, i), v.shape)
               for i, (n, v) in enumerate(sorted(means.items()))}
  module.sow("kl", "kl", _kl(means, sigma, delta, centre, posterior))
  return y


def _kl(means, sigma, delta, centre, p: Posterior):
  total = jnp.zeros((), jnp.float32)
  for n, mu in means.items():
    mu = mu.astype(jnp.float32)
    if p.prior == "gaussian":
      total += gaussian_kl(mu, sigma[n], 0.0, p.prior_sigma)
    elif p.prior == "moped":
      c = centre[n]
      total += gaussian_kl(mu, sigma[n], c, jnp.maximum(p.delta * jnp.abs(c), p.min_prior_sigma))
    else:
      w = mu + delta[n]
      total += (gaussian_log_prob(w, mu, sigma[n])
                - mixture_log_prob(w, p.pi, p.sigma1, p.sigma2))
  return total


def _bayesian_layer(base, name: str):
  """`base` (nn.Dense or nn.Conv) with a mean-field Gaussian posterior."""
  class Layer(base):
    kernel_init: Any = uniform(-0.2, 0.2)
    bias_init: Any = uniform(-0.2, 0.2)
    posterior: Posterior = Posterior()

    @nn.compact
    def __call__(self, x):
      return bayesian_call(self, super().__call__, x, self.posterior)
  Layer.__name__ = Layer.__qualname__ = name
  Layer.__doc__ = (f"{base.__name__} with a mean-field Gaussian posterior (see the module "
                   f"doc); mu starts U(-0.2, 0.2), rho U(-5, -4), `posterior` the estimator "
                   f"and prior.")
  return Layer


BayesDense = _bayesian_layer(nn.Dense, "BayesDense")
BayesConv = _bayesian_layer(nn.Conv, "BayesConv")


def dense_and_conv_paths(model, *args, **kwargs) -> list[str]:
  """The '/'-joined paths of `model`'s plain nn.Dense and nn.Conv modules,
  in call order (an abstract init with these inputs)."""
  found = []

  def record(next_fun, a, k, context):
    if context.method_name == "__call__" and type(context.module) in (nn.Dense, nn.Conv):
      path = "/".join(context.module.path)
      if path not in found:
        found.append(path)
    return next_fun(*a, **k)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda key: model.init({"params": key}, *args, **kwargs),
                   jax.random.PRNGKey(0))
  return found


def select_layers(model, sample, pattern: str = ".*", last: int = 0) -> list[str]:
  """The Dense/Conv module paths of `model` (called on `sample`) that fully
  match `pattern`, in call order; with `last`, only the last `last` of them."""
  found = dense_and_conv_paths(model, sample, train=False)
  chosen = [p for p in found if re.fullmatch(pattern, p)]
  chosen = chosen[-last:] if last else chosen
  if not chosen:
    raise ValueError(f"layers={pattern!r} (last={last}) matches none of the model's Dense/Conv "
                     f"layers: {', '.join(found)}")
  return chosen


def to_bayesian(model, sample, layers: str = ".*", last: int = 0,
                posterior: Posterior = Posterior(), mu_init: float = 0.2) -> "Bayesian":
  """`model` with a mean-field Gaussian posterior on its Dense/Conv layers
  whose paths match `layers` (the last `last` of them, if > 0): one call,
  as bayesian-torch's dnn_to_bnn. `sample` is an input batch (its shape)."""
  return Bayesian(model, select_layers(model, sample, layers, last), posterior, mu_init)


def sum_kl(collection) -> jax.Array:
  return sum((jnp.sum(jnp.stack(v)) for v in jax.tree.leaves(
      collection, is_leaf=lambda x: isinstance(x, tuple))), jnp.zeros((), jnp.float32))


class Bayesian:
  """`base` with a mean-field Gaussian posterior on its plain nn.Dense and
  nn.Conv modules at `layers` ('/'-joined module paths, e.g. "fc1" or
  "layer1_0/conv1"; `dense_and_conv_paths` lists them); `BayesDense` and
  `BayesConv` modules inside `base` are Bayesian anyway. With `mu_init`
  > 0 the converted means start U(-mu_init, mu_init) (Blundell's 0.2);
  0 keeps the model's own init. Not a Linen module: it wraps `base`'s
  init and apply and keeps its param paths.

  apply(...) returns {"logits": base's output, "kl": the summed KL of this
  call's draws (0 without a "sample" key)}.
  """

  def __init__(self, base, layers=(), posterior: Posterior = Posterior(), mu_init: float = 0.2):
    self.base = base
    self.layers = frozenset(layers)
    self.posterior = posterior
    self.mu_init = float(mu_init)
    self.rng_streams = tuple(dict.fromkeys(
        (*getattr(base, "rng_streams", ("dropout",)), STREAM)))

  def __getattr__(self, name):          # dtype, ... are the base model's
    if name == "base":
      raise AttributeError(name)
    return getattr(self.base, name)

  def _intercept(self, next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or type(module) not in (nn.Dense, nn.Conv)
        or "/".join(module.path) not in self.layers):
      return next_fun(*args, **kwargs)
    return bayesian_call(module, lambda x: next_fun(x, *args[1:], **kwargs), args[0],
                         self.posterior)

  def init(self, rngs, *args, **kwargs):
    key = rngs["params"] if isinstance(rngs, dict) else rngs
    with nn.intercept_methods(self._intercept):
      variables = dict(self.base.init(rngs, *args, **kwargs))
    variables.pop("kl", None)
    if self.mu_init:                     # Blundell's U(-a, a) for the converted means
      flat = traverse_util.flatten_dict(variables["params"], sep="/")
      chosen = sorted(p for p in flat if p.rsplit("/", 1)[0] in self.layers
                      and p.rsplit("/", 1)[-1] in ("kernel", "bias"))
      key = jax.random.fold_in(key, 0x0BBB)
      for i, p in enumerate(chosen):
        flat[p] = jax.random.uniform(jax.random.fold_in(key, i), flat[p].shape, flat[p].dtype,
                                     -self.mu_init, self.mu_init)
      variables["params"] = traverse_util.unflatten_dict(flat, sep="/")
    return variables

  def apply(self, variables, *args, rngs=None, mutable=False, **kwargs):
    wanted = [mutable] if isinstance(mutable, str) else list(mutable or [])
    with nn.intercept_methods(self._intercept):
      out, updates = self.base.apply(variables, *args, rngs=rngs, mutable=wanted + ["kl"],
                                     **kwargs)
    updates = dict(updates)
    outputs = {"logits": out, "kl": sum_kl(updates.pop("kl", {}))}
    return (outputs, updates) if mutable else outputs
