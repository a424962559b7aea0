"""Bayes by Backprop (Blundell et al., ICML 2015) and MOPED (Krishnan,
Subedar and Tickoo, AAAI 2020) on any model of the registry.

    model   <- config.model with a mean-field Gaussian posterior on the Dense
               and Conv layers that bayes.layers (a regex over their module
               paths) and bayes.last (the last k of them) pick (`nn.bayes`;
               BatchNorm stays deterministic)
    init    mu ~ U(-mu_init, mu_init), rho ~ U(rho_init), sigma = softplus(rho);
            MOPED (bayes.init_from = a deterministic workdir): mu = w exactly,
            sigma = delta * |w|, and the prior N(w, (delta |w|)^2) (the paper's;
            bayes.prior = "gaussian" gives N(0, prior_sigma^2) instead)
    loss    CE(one draw of the weights) + kl_weight * KL(q || p) / N_train, with
            N_train the training set's size (not the batch's); the KL is
            logged as loss_kl
    eval    the softmax averaged over bayes.eval_samples posterior draws (0:
            the mean weights), with NLL, ECE, Brier, entropy and mutual
            information; reliability.png from the final eval

The original personal research repo divides the KL by the batch size and
initialises badly, which leaves its BBB at chance (9.8% MNIST, 11.46%
Fashion-MNIST); its MOPED was never run.
"""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from neurojax import models
from neurojax.nn import bayes as bnn
from neurojax.train import init_from
from neurojax.train import steps as steps_lib
from neurojax.train.checkpoint import CheckpointError


# Read only at a fresh start (MOPED's source may move once the run has begun).
RESUME_SAFE = ("bayes.init_from",)


def config() -> ml_collections.ConfigDict:
  """`config.bayes`: method="bayes" (Bayes by Backprop, MOPED)."""
  return ml_collections.ConfigDict(dict(
      layers=".*",              # regex (full match) over the Dense/Conv module paths
      last=0,                   # > 0: only the last k of those (a partially Bayesian net)
      estimator="reparam",      # reparam (Blundell) | flipout | local
      prior="mixture",          # mixture | gaussian | moped
      pi=0.5,                   # the scale mixture: pi N(0, sigma1^2) + (1 - pi) N(0, sigma2^2)
      sigma1=math.exp(-1),
      sigma2=math.exp(-6),
      prior_sigma=1.0,          # gaussian: N(0, prior_sigma^2)
      rho_init=(-5.0, -4.0),    # rho ~ U(lo, hi)
      mu_init=0.2,              # mu ~ U(-mu_init, mu_init); 0: the model's own init
      kl_weight=1.0,            # the KL / N_train term's factor (1: the ELBO)
      eval_samples=10,          # S posterior draws per eval prediction; 0: the mean weights
      init_from="",             # MOPED: a deterministic run's workdir (mu = w)
      delta=0.1))               # MOPED: sigma = delta * |w| (and the moped prior's)


def validate(config) -> None:
  from neurojax import config as config_lib  # pylint: disable=g-import-not-at-top
  b = config.bayes
  for field, choices in (("estimator", bnn.ESTIMATORS), ("prior", bnn.PRIORS)):
    if b[field] not in choices:
      raise config_lib.ConfigError(f"config.bayes.{field}={b[field]!r} is not valid; choose "
                                   f"one of: {', '.join(choices)}")
  config_lib.check_number(config, "bayes.last", 0, integer=True)
  config_lib.check_number(config, "bayes.pi", 0, 1, low_open=True, high_open=True)
  for field in ("sigma1", "sigma2", "prior_sigma", "delta"):
    config_lib.check_number(config, f"bayes.{field}", 0, low_open=True)
  config_lib.check_number(config, "bayes.mu_init", 0)
  config_lib.check_number(config, "bayes.kl_weight", 0)
  config_lib.check_number(config, "bayes.eval_samples", 0, integer=True)
  rho_init = tuple(b.rho_init)
  if len(rho_init) != 2 or not rho_init[0] <= rho_init[1]:
    raise config_lib.ConfigError(f"config.bayes.rho_init={tuple(b.rho_init)} must be (lo, hi) "
                                 f"with lo <= hi, e.g. (-5.0, -4.0)")
  try:
    re.compile(b.layers)
  except re.error as e:
    raise config_lib.ConfigError(f"config.bayes.layers={b.layers!r} is not a regex: {e}") \
        from None
  if b.prior == "moped" and not b.init_from:
    raise config_lib.ConfigError(
        "config.bayes.prior='moped' centres the prior on trained weights: set "
        "config.bayes.init_from to a deterministic run's workdir (or use prior='gaussian')")


def posterior(config) -> bnn.Posterior:
  b = config.bayes
  return bnn.Posterior(estimator=b.estimator, prior=b.prior, pi=b.pi, sigma1=b.sigma1,
                       sigma2=b.sigma2, prior_sigma=b.prior_sigma, delta=b.delta,
                       rho_init=tuple(float(r) for r in b.rho_init))


def bayesian_layers(config, base, image_shape) -> list[str]:
  """The module paths `config.bayes.layers` and `last` pick, in call order."""
  from neurojax.config import ConfigError  # pylint: disable=g-import-not-at-top
  b = config.bayes
  try:
    return bnn.select_layers(base, jnp.zeros((1, *image_shape)), b.layers, int(b.last))
  except ValueError as e:
    raise ConfigError(f"config.bayes.layers / config.bayes.last on model "
                      f"{config.model.name!r}: {e}") from None


def model_spec(config, num_classes: int, image_shape) -> dict:
  from neurojax.train.experiment import config_model_spec  # pylint: disable=g-import-not-at-top
  base = config_model_spec(config, num_classes)
  layers = bayesian_layers(config, models.build(base), image_shape)
  fields = [(k, list(v) if isinstance(v, tuple) else v)
            for k, v in vars(posterior(config)).items()]
  return models.spec("bayesian", num_classes=num_classes, dtype=config.compute_dtype,
                     base=base, layers=layers, posterior=fields,
                     mu_init=0.0 if config.bayes.init_from else config.bayes.mu_init)


def objective(config, num_train: int) -> steps_lib.Objective:
  """CE of the logits + kl_weight * KL / N_train."""
  weight = float(config.bayes.kl_weight) / float(num_train)
  logits = lambda outputs: outputs["logits"]
  return steps_lib.Objective(
      {"ce": steps_lib.cross_entropy(config.label_smoothing, logits),
       "kl": lambda params, outputs, batch, state: weight * outputs["kl"]},
      logits=logits)


def predict(model, samples: int):
  """The eval's prediction: a posterior draw from the "sample" stream per
  call (averaged over `samples` calls by the eval), or the mean weights."""
  def fn(variables, images, key):
    rngs = {bnn.STREAM: key} if samples else None
    return model.apply(variables, images, train=False, rngs=rngs)["logits"]
  return fn


def eval_options(config, model, num_train: int) -> dict:
  """The eval's objective, prediction and Monte-Carlo samples (training's and
  `--mode=eval`'s)."""
  samples = int(config.bayes.eval_samples)
  return dict(objective=objective(config, num_train), predict=predict(model, samples),
              samples=max(samples, 1))


# --- MOPED ------------------------------------------------------------------

def moped(variables, deterministic, delta: float, prior: str, min_sigma: float = 1e-6,
          source: str = "the deterministic run"):
  """The Bayesian variables from a deterministic model's: every mean (and
  every other param and BN statistic) is the deterministic value exactly,
  sigma = max(delta * |w|, min_sigma) for every weight that has a rho, and
  with the moped prior its centre w. Raises CheckpointError naming a leaf
  that does not fit."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  det = traverse_util.flatten_dict(jax.device_get(deterministic), sep="/")
  extra = {p for p in flat if p.endswith(("_rho", "_prior"))}
  init_from.check_fit({p: np.shape(v) for p, v in flat.items() if p not in extra},
                      {p: np.shape(v) for p, v in det.items()}, source,
                      "is config.model the deterministic run's?", CheckpointError)
  out = {p: (np.asarray(det[p], flat[p].dtype) if p in det else flat[p]) for p in flat}
  for path in extra:
    collection, *module, leaf = path.split("/")
    name = leaf.rsplit("_", 1)[0]
    w = np.asarray(det[f"params/{'/'.join(module)}/{name}"], np.float32)
    if leaf.endswith("_rho"):
      sigma = np.maximum(delta * np.abs(w), min_sigma)
      out[path] = np.asarray(bnn.softplus_inverse(sigma), flat[path].dtype)
    elif prior == "moped":
      out[path] = w.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(out, sep="/")


def _check_source(source: str) -> None:
  if not os.path.isdir(source) or not os.path.exists(os.path.join(source, "config.json")):
    raise CheckpointError(f"config.bayes.init_from={source!r} is not a neurojax workdir (no "
                          f"config.json); train the deterministic model there first")


def _moped_initial(config):
  """setup's `initial`: the fresh state's variables from bayes.init_from."""
  source = config.bayes.init_from

  def initial(state):
    from neurojax.train.experiment import load_run  # pylint: disable=g-import-not-at-top
    _check_source(source)
    saved, _, det = load_run(source)
    if saved.model.name != config.model.name:
      raise CheckpointError(f"{source} trained a {saved.model.name}, but config.model.name="
                            f"{config.model.name!r}; set --config.model.name="
                            f"{saved.model.name}")
    new = moped(steps_lib.model_variables(state.params, state.batch_stats),
                steps_lib.model_variables(det.params, det.batch_stats),
                config.bayes.delta, config.bayes.prior, source=source)
    return state.replace(params=new["params"], batch_stats=new.get("batch_stats", {}))
  return initial


def run(config, workdir: str) -> dict:
  from neurojax.data import build_data  # pylint: disable=g-import-not-at-top
  from neurojax.methods import supervised  # pylint: disable=g-import-not-at-top
  validate(config)
  if config.bayes.init_from and not os.path.exists(os.path.join(workdir, "config.json")):
    _check_source(config.bayes.init_from)     # before the new workdir holds anything
  data = build_data(config)
  spec = model_spec(config, data.info.num_classes, data.info.image_shape)
  model = models.build(spec)
  samples = int(config.bayes.eval_samples)
  results, _ = supervised.train(
      config, workdir, method="bayes", **eval_options(config, model, data.info.num_train),
      data=data, model_spec=spec,
      initial=_moped_initial(config) if config.bayes.init_from else None,
      resume_safe=RESUME_SAFE,
      extra={"bayes": {"layers": spec["options"]["layers"], "estimator": config.bayes.estimator,
                       "prior": config.bayes.prior, "eval_samples": samples,
                       "num_train": data.info.num_train,
                       "moped_from": config.bayes.init_from or None}})
  return results
