"""Bayes by Backprop and MOPED: KLs and priors, the layers and estimators,
the converter, MOPED's init, Monte-Carlo prediction, calibration metrics,
and the method end to end (resume after SIGKILL, 8 devices against 1)."""

import json
import math
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from neurojax import losses, models
from neurojax.methods import bayes as bayes_method
from neurojax.nn import bayes
from neurojax.train import steps
from neurojax.train.state import create_train_state

KEY = jax.random.PRNGKey(0)


def test_gaussian_kl_is_the_closed_form_and_the_mixture_log_density_a_hand_sum():
  # KL(N(1, 0.5^2) || N(0, 1)) = log 2 + (0.25 + 1) / 2 - 1/2; KL(N(0, 2^2) || N(1, 2^2)) = 1/8
  kl = bayes.gaussian_kl(jnp.array([1.0, 0.0]), jnp.array([0.5, 2.0]), jnp.array([0.0, 1.0]),
                         jnp.array([1.0, 2.0]))
  assert float(kl) == pytest.approx(math.log(2) + 0.625 - 0.5 + 0.125, rel=1e-6)
  w, pi, s1, s2 = np.array([0.1, -0.002]), 0.5, math.exp(-1), math.exp(-6)
  density = lambda x, s: math.exp(-x * x / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
  want = sum(math.log(pi * density(x, s1) + (1 - pi) * density(x, s2)) for x in w)
  assert float(bayes.mixture_log_prob(jnp.asarray(w, jnp.float32), pi, s1, s2)) == \
      pytest.approx(want, rel=1e-5)
  # Far in the tail of the narrow component the log-density stays finite.
  assert np.isfinite(float(bayes.mixture_log_prob(jnp.array([3.0]), pi, s1, s2)))
  assert float(jax.nn.softplus(bayes.softplus_inverse(0.003))) == pytest.approx(0.003, rel=1e-5)


def test_the_kl_term_is_a_sum_over_weights_divided_by_n_train():
  config = bayes_method.config()
  wrap = lambda n: bayes_method.objective(_with(bayes=config), n).terms["kl"](
      None, {"kl": jnp.float32(600.0)}, None, None)
  assert float(wrap(60_000)) == pytest.approx(0.01)
  assert float(wrap(120_000)) == pytest.approx(0.005)       # doubling N halves it


def _with(**sections):
  from neurojax.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config("lenet5")
  for name, section in sections.items():
    c[name] = section
  return c


class _Net(nn.Module):
  """conv 3x3 (with bias) -> relu -> dense: one of each layer kind."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=[(1, 1), (1, 1)], name="conv")(x))
    return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def _bayesian(estimator="reparam", prior="gaussian", rho=None, mu_init=0.2, **kw):
  model = bayes.Bayesian(_Net(), ("conv", "fc"), bayes.Posterior(estimator=estimator,
                                                                 prior=prior, **kw), mu_init)
  v = model.init({"params": KEY}, jnp.zeros((1, 5, 5, 2)))
  if rho is not None:
    v = {"params": jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.full_like(x, rho) if p[-1].key.endswith("_rho") else x, v["params"])}
  return model, v


@pytest.mark.parametrize("estimator", bayes.ESTIMATORS)
def test_at_sigma_near_zero_each_estimator_is_the_deterministic_layer(estimator):
  model, v = _bayesian(estimator, rho=-30.0)          # sigma = softplus(-30) ~ 1e-13
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 5, 2))
  plain = {"params": {m: {k: w for k, w in leaves.items() if not k.endswith("_rho")}
                      for m, leaves in v["params"].items()}}
  want = _Net().apply(plain, x)
  got = model.apply(v, x, rngs={"sample": jax.random.PRNGKey(2)})
  np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
  # Without a "sample" key: the mean weights, exactly, and no KL.
  np.testing.assert_array_equal(model.apply(v, x)["logits"], want)
  assert float(model.apply(v, x)["kl"]) == 0.0


def test_the_converter_keeps_the_paths_and_draws_the_blundell_init():
  model, v = _bayesian()
  leaves = sorted(traverse_util.flatten_dict(v["params"], sep="/"))
  assert leaves == ["conv/bias", "conv/bias_rho", "conv/kernel", "conv/kernel_rho",
                    "fc/bias", "fc/bias_rho", "fc/kernel", "fc/kernel_rho"]
  flat = traverse_util.flatten_dict(v["params"], sep="/")
  for path, x in flat.items():
    low, high = (-5.0, -4.0) if path.endswith("_rho") else (-0.2, 0.2)
    assert low <= float(x.min()) and float(x.max()) <= high, path
  assert bayes.dense_and_conv_paths(_Net(), jnp.zeros((1, 5, 5, 2))) == ["conv", "fc"]
  # The same layer as a module of its own: the same parameters.
  layer = bayes.BayesDense(3)
  lv = layer.init({"params": KEY}, jnp.zeros((1, 4)))
  assert sorted(lv["params"]) == ["bias", "bias_rho", "kernel", "kernel_rho"]


def test_the_reparameterisation_gradient_matches_a_finite_difference_of_the_expectation():
  """One Bayesian dense unit, loss y^2: E[loss] = (x.mu)^2 + sum x^2 sigma^2
  in closed form; the mean of the reparameterised gradients over many draws
  is its finite-difference gradient."""
  layer = bayes.BayesDense(1, use_bias=False, posterior=bayes.Posterior(prior="gaussian"))
  x = jnp.array([[0.5, -1.0, 2.0]])
  params = {"kernel": jnp.array([[0.3], [0.1], [-0.2]]),
            "kernel_rho": jnp.array([[-1.0], [-0.5], [0.2]])}

  def loss(p, key):
    return jnp.sum(layer.apply({"params": p}, x, rngs={"sample": key}) ** 2)
  keys = jax.random.split(jax.random.PRNGKey(3), 20_000)
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, keys)
  mc = jax.tree.map(lambda g: np.mean(np.asarray(g, np.float64), axis=0), grads)

  def expected(mu, rho):
    sigma = np.log1p(np.exp(rho))
    return (x[0] @ mu) ** 2 + np.sum(np.asarray(x[0]) ** 2 * sigma ** 2)
  mu, rho = (np.asarray(params[k], np.float64)[:, 0] for k in ("kernel", "kernel_rho"))
  h = 1e-5
  for name, base in (("kernel", mu), ("kernel_rho", rho)):
    fd = []
    for i in range(3):
      up, down = base.copy(), base.copy()
      up[i] += h
      down[i] -= h
      args = lambda b: (b, rho) if name == "kernel" else (mu, b)
      fd.append((expected(*args(up)) - expected(*args(down))) / (2 * h))
    np.testing.assert_allclose(mc[name][:, 0], fd, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("estimator", ["flipout", "local"])
def test_flipout_and_local_outputs_average_to_the_mean_weights_output(estimator):
  model, v = _bayesian(estimator, rho=-1.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 2))
  draws = jax.vmap(lambda k: model.apply(v, x, rngs={"sample": k})["logits"])(
      jax.random.split(jax.random.PRNGKey(4), 1000))
  mean = model.apply(v, x)["logits"]
  spread = float(np.std(np.asarray(draws)))
  assert spread > 0.05                                        # it does draw
  np.testing.assert_allclose(np.mean(np.asarray(draws), 0), mean, atol=0.12 * spread + 0.02)


def test_moped_takes_the_weights_exactly_and_sigma_delta_w():
  model, v = _bayesian(prior="moped")
  det = _Net().init(jax.random.PRNGKey(7), jnp.zeros((1, 5, 5, 2)))
  new = bayes_method.moped(v, det, delta=0.1, prior="moped")
  flat_det = traverse_util.flatten_dict(jax.device_get(det), sep="/")
  flat = traverse_util.flatten_dict(new, sep="/")
  for path, w in flat_det.items():
    np.testing.assert_array_equal(flat[path], w)                          # mu = w exactly
    module, leaf = path.split("/")[1:]
    np.testing.assert_allclose(jax.nn.softplus(flat[f"params/{module}/{leaf}_rho"]),
                               np.maximum(0.1 * np.abs(w), 1e-6), rtol=1e-4)
    np.testing.assert_array_equal(flat[f"batch_stats/{module}/{leaf}_prior"], w)
  # At the start the posterior is the prior: the KL is 0.
  out = model.apply(new, jnp.ones((2, 5, 5, 2)), rngs={"sample": KEY})
  assert abs(float(out["kl"])) < 1e-2
  wrong = jax.tree.map(lambda x: x[..., :2], det)
  with pytest.raises(Exception, match="of shape"):
    bayes_method.moped(v, wrong, delta=0.1, prior="moped")


def test_monte_carlo_prediction_is_deterministic_for_a_key_and_s1_sigma0_is_the_plain_model():
  model, v = _bayesian(rho=-1.0)
  state = create_train_state(model, optax.sgd(0.1), KEY, (5, 5, 2)).replace(params=v["params"])
  batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (6, 5, 5, 2)),
           "label": jnp.array([0, 1, 2, 0, 1, 2]), "mask": jnp.ones(6)}
  step = jax.jit(steps.eval_step_fn(model, predict=bayes_method.predict(model, 5), samples=5))
  a, b = step(state, batch, jax.random.PRNGKey(9)), step(state, batch, jax.random.PRNGKey(9))
  chex.assert_trees_all_equal(a, b)
  c = step(state, batch, jax.random.PRNGKey(10))
  assert float(c[""]["loss"]) != float(a[""]["loss"]) and float(a[""]["mi"]) > 0
  _, v0 = _bayesian(rho=-100.0)
  state0 = state.replace(params=v0["params"])
  one = steps.eval_step_fn(model, predict=bayes_method.predict(model, 1), samples=1)(
      state0, batch, KEY)[""]
  plain = {"params": {m: {k: w for k, w in leaves.items() if not k.endswith("_rho")}
                      for m, leaves in v0["params"].items()}}
  logits = _Net().apply(plain, batch["image"])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  assert float(one["loss"]) == pytest.approx(float(jnp.sum(nll)), rel=1e-5)


def test_ece_nll_and_brier_against_a_hand_computation():
  probs = np.array([[0.7, 0.2, 0.1],      # confident, right    (bin of 0.7: 10)
                    [0.6, 0.3, 0.1],      # wrong (label 1)     (bin 8)
                    [0.34, 0.33, 0.33],   # right               (bin 5)
                    [0.9, 0.05, 0.05]])   # padded: weight 0
  labels = np.array([0, 1, 0, 2])
  weights = np.array([1.0, 1.0, 1.0, 0.0])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  sums = {**losses.metric_sums(logits, labels, losses.cross_entropy(logits, labels), weights),
          **losses.calibration_sums(logits, labels, weights)}
  got = losses.means(jax.device_get(sums))
  assert got["loss"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.34)) / 3,
                                      rel=1e-5)
  brier = [(0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2), (0.6 ** 2 + 0.7 ** 2 + 0.1 ** 2),
           (0.66 ** 2 + 0.33 ** 2 + 0.33 ** 2)]
  assert got["brier"] == pytest.approx(np.mean(brier), rel=1e-5)
  # Each example alone in its bin: ECE = mean |correct - confidence|.
  assert got["ece"] == pytest.approx((0.3 + 0.6 + 0.66) / 3, rel=1e-5)
  entropy = [-np.sum(p * np.log(p)) for p in probs[:3]]
  assert got["entropy"] == pytest.approx(np.mean(entropy), rel=1e-5)
  # Two examples in one bin: their gaps pool before the absolute value.
  pooled = losses.calibration_sums(jnp.log(jnp.array([[0.72, 0.28], [0.7, 0.3]])),
                                   np.array([0, 1]), np.ones(2))
  assert losses.ece({**jax.device_get(pooled), "count": 2.0}) == pytest.approx(
      abs(1 - (0.72 + 0.7)) / 2, rel=1e-5)


# --- the method end to end ---------------------------------------------------

# Adam, as the configs: SGD at the tiny config's lr 0.05 is so sensitive here
# (the KL dominates at N_train = 512) that float summation order shows.
TINY_BBB = ["--config.method=bayes", "--config.bayes.estimator=flipout",
            "--config.optimizer.name=adam", "--config.schedule.lr=0.001",
            "--config.bayes.eval_samples=3", "--config.num_steps=40",
            "--config.checkpoint_every_steps=10", "--config.eval_every_steps=20"]


@pytest.fixture(scope="module")
def bbb_run(tmp_path_factory):
  from cli import run  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("bbb")
  run(workdir, *TINY_BBB)
  return workdir, json.loads((workdir / "results.json").read_text())


def test_the_method_trains_logs_the_kl_and_reports_calibration(bbb_run):
  from cli import last_metrics  # pylint: disable=g-import-not-at-top
  workdir, results = bbb_run
  assert results["method"] == "bayes" and results["bayes"]["num_train"] == 512
  assert results["bayes"]["layers"] == ["fc1", "fc2", "fc3"]
  assert results["train_step_compiles"] == 1
  m = last_metrics(workdir)
  assert m["train/loss_kl"] > 0
  assert m["train/loss"] == pytest.approx(m["train/loss_ce"] + m["train/loss_kl"], rel=1e-5)
  assert {"ece", "brier", "entropy", "mi", "top1"} <= set(results["final"])
  assert sum(results["reliability"]["count"]) == 100
  assert (workdir / "reliability.png").exists()


def test_killed_and_resumed_bit_identical(bbb_run, tmp_path):
  from cli import ROOT, command, env, run  # pylint: disable=g-import-not-at-top
  from neurojax.train.experiment import load_run  # pylint: disable=g-import-not-at-top
  reference, results = bbb_run
  killed = tmp_path / "killed"
  proc = subprocess.run([sys.executable, f"{ROOT}/tests/kill_at.py", "20",
                         *command(killed, *TINY_BBB)[3:]], env=env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  run(killed, *TINY_BBB)
  _, _, want = load_run(str(reference))
  _, _, got = load_run(str(killed))
  chex.assert_trees_all_equal(jax.device_get(got.params), jax.device_get(want.params))
  assert json.loads((killed / "results.json").read_text())["final"] == results["final"]


def _bbb_steps(devices, estimator):
  """5 BBB train steps of `_Net` (all Bayesian) on a mesh of `devices`."""
  from neurojax import parallel  # pylint: disable=g-import-not-at-top
  config = _with(bayes=bayes_method.config())
  config.bayes.estimator = estimator
  mesh = parallel.make_mesh(devices)
  model = bayes.Bayesian(_Net(), ("conv", "fc"), bayes_method.posterior(config))
  tx = optax.adam(1e-3)
  state = create_train_state(model, tx, KEY, (5, 5, 2), parallel.replicated(mesh))
  step = steps.jit_train_step(steps.train_step_fn(
      model, tx, objective=bayes_method.objective(config, 1000)), mesh)
  rng = np.random.default_rng(0)
  for _ in range(5):
    batch = {"image": rng.normal(size=(16, 5, 5, 2)).astype(np.float32),
             "label": rng.integers(0, 3, 16).astype(np.int32)}
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_eight_devices_equal_one():
  """The weight draws and flipout's per-example signs are the same however
  the batch is sharded; only float summation order differs."""
  p1, m1 = _bbb_steps(jax.devices()[:1], "flipout")
  p8, m8 = _bbb_steps(jax.devices(), "flipout")
  chex.assert_trees_all_close(p1, p8, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m1, m8, rtol=1e-5, atol=1e-6)
  assert m1["loss_kl"] > 0


def test_a_moped_source_that_is_not_a_workdir_fails_before_the_workdir_holds_anything(tmp_path):
  from neurojax.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  config = _with(bayes=bayes_method.config())
  config.method = "bayes"
  config.bayes.init_from = str(tmp_path / "nothing")
  with pytest.raises(CheckpointError, match="is not a neurojax workdir"):
    bayes_method.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  config.bayes.prior, config.bayes.init_from = "moped", ""
  with pytest.raises(ValueError, match="set config.bayes.init_from"):
    bayes_method.validate(config)
