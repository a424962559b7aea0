"""The training-recipe pieces: mixup/cutmix, model EMA, gradient
accumulation, and all of them through a killed-and-resumed run."""

import json
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from neurojax.config import ConfigError, base_config, validate
from neurojax import losses
from neurojax.train import mix
from neurojax.train.experiment import load_run
from neurojax.train.optimizers import make_optimizer
from neurojax.train.state import create_train_state
from neurojax.train.steps import train_step_fn
from tests import cli


def _mix_cfg(**kw):
  c = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5,
                                     prob=1.0))
  c.update(kw)
  return c


def _images(b=6, h=8, w=10, c=3):
  return jax.random.normal(jax.random.PRNGKey(0), (b, h, w, c))


def test_no_mixing_is_the_identity_with_lam_one():
  x = _images()
  for cfg in (_mix_cfg(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0), _mix_cfg(mixup_alpha=0.8,
              prob=0.0), _mix_cfg(cutmix_alpha=1.0, prob=0.0)):
    for k in range(5):
      out, lam = mix.mix_batch(jax.random.PRNGKey(k), x, cfg)
      chex.assert_trees_all_equal(out, x)
      assert float(lam) == 1.0
  box, lam = mix.cutmix_box(jax.random.PRNGKey(0), 8, 10, 1.0)   # cutmix at lam=1: no box
  assert not bool(box.any()) and float(lam) == 1.0


def test_mixup_is_the_convex_combination_with_the_reversed_batch():
  x = _images()
  lams = []
  cfg = _mix_cfg(mixup_alpha=0.8)
  mixed = jax.jit(lambda key: mix.mix_batch(key, x, cfg))      # one compile, 200 draws
  for k in range(200):
    out, lam = mixed(jax.random.PRNGKey(k))
    if k < 3:
      chex.assert_trees_all_close(out, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    lams.append(float(lam))
  assert 0 < min(lams) and max(lams) < 1
  assert np.mean(lams) == pytest.approx(0.5, abs=0.05)              # Beta(a, a) has mean 1/2
  assert np.var(lams) == pytest.approx(1 / (4 * (2 * 0.8 + 1)), rel=0.25)


def test_cutmix_pastes_one_box_and_lam_is_the_uncovered_fraction():
  x = _images(h=16, w=16)
  cutmixed = 0
  cfg = _mix_cfg(mixup_alpha=0.8, cutmix_alpha=1.0)
  mixed = jax.jit(lambda key: mix.mix_batch(key, x, cfg))
  for k in range(100):
    out, lam = mixed(jax.random.PRNGKey(k))
    changed = np.asarray(jnp.any(out != x, axis=(0, 3)))      # [H, W]
    if changed.all():
      continue    # mixup (0 < lam < 1) changes every pixel
    cutmixed += 1
    rows, cols = np.where(changed)
    box = np.zeros_like(changed)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(changed, box)                  # one rectangle
    np.testing.assert_array_equal(np.asarray(out)[:, box], np.asarray(x[::-1])[:, box])
    assert float(lam) == pytest.approx(1 - box.mean())
  assert 30 < cutmixed < 70            # switch_prob 0.5 of 100 batches


def test_mixed_loss_is_cross_entropy_against_mixed_smoothed_targets():
  """timm's targets: lam * smooth(y) + (1 - lam) * smooth(y reversed), with
  off = ls / K and on = 1 - ls + ls / K."""
  rng = np.random.default_rng(0)
  logits, labels, lam, ls, k = rng.normal(size=(5, 4)), rng.integers(0, 4, 5), 0.3, 0.1, 4
  def smooth(y):
    t = np.full((len(y), k), ls / k)
    t[np.arange(len(y)), y] = 1 - ls + ls / k
    return t
  targets = lam * smooth(labels) + (1 - lam) * smooth(labels[::-1])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -(targets * logp).sum(-1)
  got = losses.mixed_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), lam,
                                   ls)
  np.testing.assert_allclose(got, want, rtol=1e-5)


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Dense(3)(x.reshape(len(x), -1))


def _optimizer(accum: int, schedule):
  cfg = base_config().optimizer
  cfg.update(dict(name="adamw", weight_decay=0.05, grad_accum_steps=accum))
  params = create_train_state(_Linear(), optax.identity(), jax.random.PRNGKey(0), (4,)).params
  return make_optimizer(cfg, schedule, params)


def _data(n, batch, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.normal(size=(batch, 4)).astype(np.float32),
           "label": rng.integers(0, 3, batch).astype(np.int32)} for _ in range(n)]


def _run(tx, batches, **step_kw):
  state = create_train_state(_Linear(), tx, jax.random.PRNGKey(0), (4,),
                             ema=bool(step_kw.get("ema_decay")))
  step = jax.jit(train_step_fn(_Linear(), tx, **step_kw))
  trajectory = [state.params]
  for b in batches:
    state, _ = step(state, b)
    trajectory.append(state.params)
  return state, trajectory


def test_accumulating_k_micro_batches_equals_one_big_batch():
  """3 updates from 4 micro-batches of 5 each == 3 steps on the batches of
  20, with AdamW, weight decay, a schedule (update u at step u * k) and EMA."""
  sched = optax.linear_schedule(0.1, 0.01, 12)
  big = _data(3, 20)
  micro = [{k: v[i * 5:(i + 1) * 5] for k, v in b.items()} for b in big for i in range(4)]
  s_big, traj_big = _run(_optimizer(1, lambda u: sched(4 * u)), big, ema_decay=0.9)
  s_acc, traj_acc = _run(_optimizer(4, sched), micro, ema_decay=0.9)
  chex.assert_trees_all_close(s_acc.params, s_big.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s_acc.ema_params, s_big.ema_params, rtol=1e-5, atol=1e-6)
  # The params move only at the k-th micro-step.
  chex.assert_trees_all_equal(traj_acc[3], traj_acc[0])
  chex.assert_trees_all_close(traj_acc[4], traj_big[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(traj_acc[4])[0], jax.tree.leaves(traj_acc[0])[0])


def test_ema_follows_its_formula():
  d = 0.8
  state, trajectory = _run(_optimizer(1, 0.05), _data(5, 8), ema_decay=d)
  ema = trajectory[0]
  for params in trajectory[1:]:
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
  chex.assert_trees_all_close(state.ema_params, ema, rtol=1e-6)
  assert not np.allclose(jax.tree.leaves(state.ema_params)[0], jax.tree.leaves(state.params)[0])


@pytest.mark.parametrize("override,expected", [
    ("--config.ema_decay=1.0", r"ema_decay=1.0 must be in \[0, 1\)"),
    ("--config.mix.prob=2.0", r"mix.prob=2.0 must be in \[0, 1\]"),
    ("--config.mix.cutmix_alpha=-1.0", r"mix.cutmix_alpha=-1.0 must be >= 0"),
    ("--config.optimizer.grad_accum_steps=0", r"grad_accum_steps=0 must be an integer >= 1"),
])
def test_recipe_config_errors_name_the_field(override, expected):
  config = base_config()
  key, value = override[len("--config."):].split("=")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = type(node[leaf])(value)
  with pytest.raises(ConfigError, match=expected):
    validate(config)


def test_resume_with_every_recipe_piece_equals_no_interruption(tmp_path):
  """Mixup+cutmix, label smoothing, EMA and accumulation over 3 steps: a run
  resumed from an earlier checkpoint ends bit-identical, EMA included."""
  args = ["--config.num_steps=60", "--config.checkpoint_every_steps=15",
          "--config.eval_every_steps=30", "--config.mix.mixup_alpha=0.8",
          "--config.mix.cutmix_alpha=1.0", "--config.label_smoothing=0.1",
          "--config.ema_decay=0.9", "--config.optimizer.grad_accum_steps=3",
          "--config.keep_checkpoints=5"]
  reference = tmp_path / "reference"
  proc = cli.run(reference, *args)
  assert "ema_top1" in proc.stdout and "the best epoch's, picked on the test set" in proc.stdout
  results = json.loads((reference / "results.json").read_text())
  assert results["best"] == max(results["evals"], key=lambda e: e["top1"])
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  for step in (30, 45, 60):                 # back to the checkpoint of step 15
    shutil.rmtree(resumed / "checkpoints" / str(step))
  cli.run(resumed, *args)
  assert json.loads((resumed / "results.json").read_text())["resumed_from"] == 15
  _, _, ref = load_run(str(reference))
  _, _, got = load_run(str(resumed))
  chex.assert_trees_all_equal(got.params, ref.params)
  chex.assert_trees_all_equal(got.ema_params, ref.ema_params)
  chex.assert_trees_all_equal(got.opt_state, ref.opt_state)
  assert not np.array_equal(jax.tree.leaves(ref.ema_params)[0], jax.tree.leaves(ref.params)[0])
  metrics = cli.last_metrics(reference)
  assert "eval/ema_top1" in metrics and "eval/top1" in metrics


def test_lr_group_matching_nothing_fails_clearly_and_leaves_the_workdir_reusable(tmp_path):
  workdir = tmp_path / "w"
  proc = cli.run(workdir, "--config.optimizer.lr_groups=(('quadratic', 10.0),)", check=False)
  assert proc.returncode != 0
  assert ("OptimizerConfigError: config.optimizer.lr_groups[0]: 'quadratic' matches no "
          "parameter; the params are named like fc1/bias, fc1/kernel") in proc.stderr, proc.stderr[-2000:]
  assert not (workdir / "config.json").exists()
  cli.run(workdir, "--config.num_steps=20", "--config.optimizer.lr_groups=(('fc2', 10.0),)")


def _supervised_run(path, model, top1s, final=None):
  path.mkdir(parents=True)
  evals = [{"step": 10 * (i + 1), "epoch": float(i + 1), "top1": t} for i, t in enumerate(top1s)]
  (path / "results.json").write_text(json.dumps(
      {"model": model, "evals": evals, "final": evals[-1], "images_per_sec": 100.0}))
  return str(path)


def test_supervised_summary_reports_final_and_best_epoch_apart(tmp_path, capsys):
  from neurojax import plots  # pylint: disable=g-import-not-at-top
  runs = [_supervised_run(tmp_path / "a0", "resnet20", [0.5, 0.9, 0.8]),
          _supervised_run(tmp_path / "a1", "resnet20", [0.6, 0.7, 0.9]),
          _supervised_run(tmp_path / "b0", "dit_resnet20", [0.5, 0.6, 0.7])]
  rows = {r["model"]: r for r in plots.supervised_summary(runs)}
  a = rows["resnet20"]
  assert a["runs"] == 2 and a["final_top1"] == pytest.approx(0.85)
  assert a["final_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
  assert a["best_top1"] == pytest.approx(0.9) and a["best_epochs"] == [2.0, 3.0]
  assert a["curve_top1"] == pytest.approx([0.55, 0.8, 0.85])
  assert rows["dit_resnet20"]["best_std"] == 0.0
  plots.main(["--out", str(tmp_path / "s.png"), *runs])
  assert "best_epochs" in capsys.readouterr().out and (tmp_path / "s.png").stat().st_size > 0
  with pytest.raises(ValueError, match="evaluated at different epochs"):
    plots.supervised_summary(runs + [_supervised_run(tmp_path / "a2", "resnet20", [0.5])])


def test_mixing_ema_and_accumulation_on_8_devices_match_1():
  """The batch's reverse is the global batch's, so sharding changes nothing."""
  from neurojax import parallel  # pylint: disable=g-import-not-at-top
  from neurojax.train import steps  # pylint: disable=g-import-not-at-top
  cfg = _mix_cfg(mixup_alpha=0.8, cutmix_alpha=1.0)
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    tx = _optimizer(2, 0.05)
    model = _Linear()
    state = create_train_state(model, tx, jax.random.PRNGKey(0), (2, 2, 1),
                               parallel.replicated(mesh), ema=True)
    step = steps.jit_train_step(train_step_fn(model, tx, mix=cfg, ema_decay=0.9,
                                              label_smoothing=0.1), mesh)
    for b in _data(4, 16):
      b = {"image": b["image"].reshape(16, 2, 2, 1), "label": b["label"]}
      state, _ = step(state, parallel.shard_batch(b, mesh))
    out.append(jax.device_get((state.params, state.ema_params)))
  assert len(jax.devices()) == 8
  chex.assert_trees_all_close(out[0], out[1], rtol=1e-5, atol=1e-6)
