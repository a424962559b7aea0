"""The core a method builds on: loss terms, RNG streams, the Monte-Carlo
eval, the phase loop (a model rebuilt mid-run, SIGKILL and resume), SIGTERM,
and the layering of the packages."""

import ast
import json
import os
import signal
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cli import ROOT, command, committed_steps, env, last_metrics, run
from neurojax import rng as rng_lib
from neurojax.train import steps
from neurojax.train.experiment import load_run
from neurojax.train.state import create_train_state

import phase_rebuild  # noqa: E402  (registers test_mlp here too, for load_run)


class _Dense(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _batch(n=8, seed=0):
  r = np.random.default_rng(seed)
  return {"image": r.normal(size=(n, 4)).astype(np.float32),
          "label": r.integers(0, 3, n).astype(np.int32), "mask": np.ones(n, np.float32)}


def test_loss_terms_are_summed_differentiated_and_logged():
  model, tx = _Dense(), optax.sgd(0.1)
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (4,))
  batch = _batch()
  l2 = lambda params, outputs, batch, state: 0.3 * sum(  # noqa: E731
      jnp.sum(x ** 2) for x in jax.tree.leaves(params))
  objective = steps.Objective({"ce": steps.cross_entropy(), "l2": l2})
  new, metrics = jax.jit(steps.train_step_fn(model, tx, objective=objective))(state, batch)

  def total(params):
    logits = model.apply({"params": params}, batch["image"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return ce + l2(params, None, None, None), ce
  (want_loss, want_ce), grads = jax.value_and_grad(total, has_aux=True)(state.params)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  chex.assert_trees_all_close(new.params, want, rtol=1e-6, atol=1e-7)
  assert float(metrics["loss"]) == pytest.approx(float(want_loss), rel=1e-6)
  assert float(metrics["loss_ce"]) == pytest.approx(float(want_ce), rel=1e-6)
  assert float(metrics["loss_l2"]) == pytest.approx(float(want_loss - want_ce), rel=1e-5)


def test_rng_streams_are_the_declared_ones_with_named_salts():
  key = jax.random.PRNGKey(3)
  got = rng_lib.stream_keys(key, ("dropout", "gate", "mix"))
  np.testing.assert_array_equal(got["dropout"], key)
  np.testing.assert_array_equal(got["gate"], jax.random.fold_in(key, 1))
  np.testing.assert_array_equal(got["mix"], jax.random.fold_in(key, 2))
  with pytest.raises(ValueError, match="STEP_STREAMS"):
    rng_lib.stream_keys(key, ("noise",))
  assert rng_lib.model_streams(_Dense()) == ("dropout",)
  assert rng_lib.PRUNE_RANDOM >= 2**31        # above every step number: no collision


def test_monte_carlo_eval_averages_the_softmax_over_samples():
  model = _Dense()
  state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), (4,))
  batch = _batch(n=6)

  def predict(variables, images, key):     # a stochastic prediction, e.g. sampled weights
    logits = model.apply(variables, images)
    return logits + 2.0 * jax.random.normal(key, logits.shape)
  base = jax.random.PRNGKey(9)
  step = steps.eval_step_fn(model, predict=predict, samples=5)
  sums = jax.jit(step)(state, batch, base)[""]
  probs = np.mean([jax.nn.softmax(predict({"params": state.params}, batch["image"],
                                          jax.random.fold_in(base, s))) for s in range(5)], 0)
  nll = -np.log(probs[np.arange(6), batch["label"]])
  assert float(sums["loss"]) == pytest.approx(float(nll.sum()), rel=1e-5)
  assert float(sums["top1"]) == float((probs.argmax(-1) == batch["label"]).sum())
  # One sample of a deterministic model is the plain eval.
  plain = jax.jit(steps.eval_step_fn(model))(state, batch, base)[""]
  logits = model.apply({"params": state.params}, batch["image"])
  want = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).sum()
  assert float(plain["loss"]) == pytest.approx(float(want), rel=1e-6)


class _Noisy(nn.Module):
  """Samples its output noise from the stream it declares (like a Bayesian layer)."""
  rng_streams = ("sample",)

  @nn.compact
  def __call__(self, x, train=False):
    logits = nn.Dense(3)(x.reshape(x.shape[0], -1))
    return logits + jax.random.normal(self.make_rng("sample"), logits.shape)


def test_a_monte_carlo_eval_feeds_the_model_its_declared_streams():
  model = _Noisy()
  variables = model.init({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
                         jnp.zeros((1, 4)))
  state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), (4,))
  state = state.replace(params=variables["params"])
  batch, base = _batch(n=6), jax.random.PRNGKey(5)
  sums = jax.jit(steps.eval_step_fn(model, samples=3))(state, batch, base)[""]
  probs = np.mean([jax.nn.softmax(model.apply(
      variables, batch["image"], rngs=rng_lib.stream_keys(jax.random.fold_in(base, s),
                                                           ("sample",)))) for s in range(3)], 0)
  nll = -np.log(probs[np.arange(6), batch["label"]])
  assert float(sums["loss"]) == pytest.approx(float(nll.sum()), rel=1e-5)


def _state(workdir):
  _, model, state = load_run(str(workdir))
  return model, jax.device_get(state)


def test_a_model_rebuilt_at_a_phase_start_resumes_after_sigkill_bit_identical(tmp_path):
  kill_at = 40          # the model widens at step 30; killed right after the save of 40
  script = os.path.join(ROOT, "tests", "phase_rebuild.py")
  go = lambda *args: subprocess.run([sys.executable, script, *args], env=env(),  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
  reference = tmp_path / "reference"
  assert go(str(reference)).returncode == 0
  killed = tmp_path / "killed"
  proc = go(str(killed), str(kill_at))
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert max(committed_steps(killed)) <= kill_at
  proc = go(str(killed))
  assert proc.returncode == 0, proc.stderr[-3000:]
  model, want = _state(reference)
  _, got = _state(killed)
  assert model.width == 16 and got.params["hidden"]["kernel"].shape == (64, 16)
  chex.assert_trees_all_equal(got.params, want.params)
  chex.assert_trees_all_equal(got.opt_state, want.opt_state)
  assert last_metrics(killed) == last_metrics(reference)


def _wait_for_step(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  end = time.time() + timeout
  while time.time() < end and proc.poll() is None:
    if os.path.exists(path):
      with open(path) as f:
        steps_seen = [json.loads(l)["step"] for l in f if l.endswith("\n")]
      if steps_seen and max(steps_seen) >= step:
        return
    time.sleep(0.02)
  raise AssertionError(f"the run did not reach step {step}")


def test_sigterm_mid_epoch_checkpoints_that_step_and_resume_is_bit_identical(tmp_path):
  # 1000 steps per epoch and no periodic checkpoints: only the stop saves one.
  overrides = ("--config.data.synthetic_train_size=32000", "--config.num_steps=700",
               "--config.checkpoint_every_steps=0", "--config.eval_every_steps=350",
               "--config.log_every_steps=10")
  reference = tmp_path / "reference"
  run(reference, *overrides)
  stopped = tmp_path / "stopped"
  proc = subprocess.Popen(command(stopped, *overrides), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_step(stopped, 20, proc)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("neurojax: stopped by SIGTERM at step ") and "Traceback" not in stderr
  step = int(last.split("at step ")[1].split(";")[0])
  assert 20 <= step < 700 and committed_steps(stopped) == [step]      # mid-epoch 0
  run(stopped, *overrides)
  _, want = _state(reference)
  _, got = _state(stopped)
  chex.assert_trees_all_equal(got, want)
  assert last_metrics(stopped) == last_metrics(reference)
  with open(os.path.join(stopped, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  keys = [(r["step"], k) for r in records for k in r if k != "step"]
  assert len(keys) == len(set(keys))          # nothing written twice


def _imports(package):
  """{module file: [imported neurojax modules]} of a package directory."""
  out = {}
  for base, _, files in os.walk(os.path.join(ROOT, "neurojax", package)):
    for name in files:
      if name.endswith(".py"):
        tree = ast.parse(open(os.path.join(base, name)).read())
        out[name] = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and n.module] + [a.name for n in ast.walk(tree)
                                      if isinstance(n, ast.Import) for a in n.names]
  return out


@pytest.mark.parametrize("package,forbidden", [("train", "neurojax.methods"),
                                               ("sparsity", "neurojax.train"),
                                               ("models", "neurojax.train"),
                                               ("nn", "neurojax.train")])
def test_layering(package, forbidden):
  bad = {f: [m for m in mods if m.startswith(forbidden)] for f, mods in _imports(package).items()}
  assert not any(bad.values()), bad
