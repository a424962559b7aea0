"""Train/eval steps, sharding, losses, schedules and optimizers."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from neurojax import models, parallel
from neurojax.config import ConfigError, base_config, validate
from neurojax import losses
from neurojax.train import steps
from neurojax.train.optimizers import make_optimizer
from neurojax.train.schedules import make_schedule
from neurojax.train.state import create_train_state


def _batches(n, batch, shape, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.normal(size=(batch, *shape)).astype(np.float32),
           "label": rng.integers(0, 10, size=batch).astype(np.int32)} for _ in range(n)]


def _train(devices, model_name="resnet20", n_steps=3, shape=(8, 8, 3), dtype="float32", lr=0.01,
           rules=None, tx=None, out=None):
  mesh = parallel.make_mesh(devices)
  model = models.get_model(model_name, num_classes=10, dtype=dtype)
  tx = tx or optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))
  state = create_train_state(model, tx, jax.random.PRNGKey(0), shape)
  state = jax.device_put(state, parallel.state_shardings(mesh, state, rules))
  step = steps.jit_train_step(steps.train_step_fn(model, tx, label_smoothing=0.1), mesh,
                              rules=rules)
  history = []
  for b in _batches(n_steps, 16, shape):
    state, m = step(state, parallel.shard_batch(b, mesh))
    history.append(m)
  if out is not None:
    out.update(state=state, step=step)
  return jax.device_get(state), jax.device_get(history)


def test_eight_devices_match_one():
  assert jax.device_count() == 8, "conftest should give 8 fake CPU devices"
  s1, m1 = _train(jax.devices()[:1])
  s8, m8 = _train(jax.devices())
  # The BN batch statistics are over the global batch, so nothing differs
  # but the order of float reductions. (lr is small: a large one makes this
  # tiny model chaotic, and float noise then grows 1000x per step.)
  chex.assert_trees_all_close(m1, m8, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.params, s8.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.batch_stats, s8.batch_stats, rtol=1e-5, atol=1e-6)
  assert int(s8.step) == 3
  # ...and training did something.
  assert m1[-1]["loss"] != m1[0]["loss"]


def test_fsdp_state_on_8_devices_matches_replicated_on_1():
  """config.parallel.state="fsdp": params and momentum sharded 8 ways (each
  device holds 1/8 of every leaf with a dimension 8 divides), the same
  training as one device, one compile, and less state per device."""
  rules = parallel.Rules(min_size=0)
  s1, m1 = _train(jax.devices()[:1])
  live = {}
  s8, m8 = _train(jax.devices(), rules=rules, out=live)
  chex.assert_trees_all_close(m1, m8, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.params, s8.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.opt_state, s8.opt_state, rtol=1e-5, atol=1e-6)
  state = live["state"]
  kernel = state.params["stage2_block0"]["conv1"]["kernel"]         # [3, 3, 16, 32]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
  assert kernel.addressable_shards[0].data.shape == (3, 3, 16, 4)
  moments = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
             if "stage2_block0" in jax.tree_util.keystr(path) and leaf.shape == kernel.shape
             and "conv1" in jax.tree_util.keystr(path)]
  assert moments and all(m.sharding.spec == kernel.sharding.spec for m in moments)
  assert state.params["fc"]["bias"].sharding.is_fully_replicated    # 10: 8 does not divide
  assert live["step"]._cache_size() == 1                            # pylint: disable=protected-access
  replicated = jax.device_put(state, parallel.replicated(parallel.make_mesh()))
  assert parallel.per_device_bytes(state) < parallel.per_device_bytes(replicated) / 4


def test_state_rules_pick_leaves_by_path_and_size():
  mesh = parallel.make_mesh()
  tree = {"params": {"big": jnp.zeros((64, 24)), "small": jnp.zeros((8, 8)),
                     "odd": jnp.zeros((7, 9)), "skip": jnp.zeros((64, 64))}}
  rules = parallel.Rules(rules=(("skip", "replicated"), ("params/", "fsdp")), min_size=100)
  got = jax.tree.map(lambda s: s.spec, parallel.state_shardings(mesh, tree, rules))
  assert got == {"params": {"big": jax.sharding.PartitionSpec("data"),   # 64 > 24, both divide
                            "small": jax.sharding.PartitionSpec(),       # under min_size
                            "odd": jax.sharding.PartitionSpec(),         # 8 divides neither
                            "skip": jax.sharding.PartitionSpec()}}       # the first rule
  assert parallel.fsdp_spec((3, 3, 64, 64), 8, 0) == jax.sharding.PartitionSpec(
      None, None, None, "data")                                          # the last of equals
  c = base_config("lenet5")
  c.parallel.state = "zero"
  with pytest.raises(ConfigError, match="config.parallel.state='zero' is not valid"):
    validate(c)
  c.parallel.state, c.parallel.rules = "fsdp", (("conv(", "fsdp"),)
  with pytest.raises(ConfigError, match=r"config.parallel.rules\[0\]: 'conv\(' is not a regex"):
    validate(c)
  c.parallel.rules = (("conv", "zero3"),)
  with pytest.raises(ConfigError, match=r"rules\[0\]=.*kind one of: fsdp, replicated"):
    validate(c)


def test_bf16_step_close_to_f32():
  _, m32 = _train(jax.devices()[:2], "lenet5", 2, (28, 28, 1))
  s16, m16 = _train(jax.devices()[:2], "lenet5", 2, (28, 28, 1), dtype="bfloat16")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.params))
  np.testing.assert_allclose(m16[0]["loss"], m32[0]["loss"], rtol=2e-2)


def test_cross_entropy_with_label_smoothing_by_hand():
  logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
  labels = np.array([0, 1])
  eps = 0.1
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[labels]
  expected = -(target * logp).sum(-1)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, eps), expected, rtol=1e-6)


def test_topk_and_masked_sums():
  logits = jnp.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],    # label 1: top-1
                      [0.9, 0.1, 0.0, 0.2, 0.3, 0.4],    # label 2: rank 6
                      [0.9, 0.1, 0.0, 0.2, 0.3, 0.4],    # label 4: rank 3
                      [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])   # padded row
  labels = jnp.array([1, 2, 4, 0])
  weights = jnp.array([1.0, 1.0, 1.0, 0.0])
  sums = losses.metric_sums(logits, labels, jnp.array([1.0, 2.0, 3.0, 100.0]), weights)
  assert losses.means(jax.device_get(sums)) == pytest.approx(
      {"loss": 2.0, "top1": 1 / 3, "top5": 2 / 3})


def test_eval_over_padded_batches_matches_unpadded():
  mesh = parallel.make_mesh()
  model = models.get_model("lenet_300_100", num_classes=10)
  tx = optax.sgd(0.1)
  state = create_train_state(model, tx, jax.random.PRNGKey(1), (28, 28, 1),
                             parallel.replicated(mesh))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(21, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, 21).astype(np.int32)
  batches = []
  for i in range(0, 21, 8):   # 8, 8, 5 real rows; the last padded to 8
    xb, yb = x[i:i + 8], y[i:i + 8]
    pad = 8 - len(xb)
    batches.append({"image": np.pad(xb, ((0, pad), (0, 0), (0, 0), (0, 0))),
                    "label": np.pad(yb, (0, pad)),
                    "mask": np.pad(np.ones(len(xb), np.float32), (0, pad))})
  got = steps.evaluate(steps.jit_eval_step(steps.eval_step_fn(model), mesh), state, batches,
                       mesh)[""]
  logits = np.asarray(model.apply({"params": state.params}, x))
  want_top1 = np.mean(logits.argmax(-1) == y)
  want_loss = np.mean(np.asarray(losses.cross_entropy(logits, y)))
  assert got["top1"] == pytest.approx(want_top1)
  assert got["loss"] == pytest.approx(want_loss, rel=1e-5)


def _sched(**kw):
  c = base_config().schedule
  c.update(kw)
  return c


def test_cosine_with_warmup_by_hand():
  s = make_schedule(_sched(name="cosine", lr=0.4, warmup_epochs=1.0, final_lr_fraction=0.0),
                    steps_per_epoch=10, total_steps=50)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.2)
  assert float(s(10)) == pytest.approx(0.4)
  assert float(s(30)) == pytest.approx(0.4 * 0.5 * (1 + np.cos(np.pi * 20 / 40)))
  assert float(s(50)) == pytest.approx(0.0, abs=1e-7)


def test_multistep_and_step_by_hand():
  s = make_schedule(_sched(name="multistep", lr=0.1, milestones=(2, 3), gamma=0.1),
                    steps_per_epoch=10, total_steps=40)
  assert [float(s(i)) for i in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  s = make_schedule(_sched(name="step", lr=1.0, step_epochs=2.0, gamma=0.5),
                    steps_per_epoch=5, total_steps=40)
  assert [float(s(i)) for i in (0, 9, 10, 20)] == pytest.approx([1.0, 1.0, 0.5, 0.25])


def test_sgd_weight_decay_is_coupled_l2_and_exclusions_work():
  cfg = base_config().optimizer
  cfg.update(dict(name="sgd", momentum=0.9, weight_decay=0.1, weight_decay_exclude="bias"))
  params = {"dense": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])}}
  grads = {"dense": {"kernel": jnp.array([0.5, 0.5]), "bias": jnp.array([0.5])}}
  tx = make_optimizer(cfg, 0.01, params)
  upd, state = tx.update(grads, tx.init(params), params)
  # PyTorch SGD: d = g + wd*w; buf = d (first step); w -= lr*buf.
  chex.assert_trees_all_close(upd["dense"]["kernel"], -0.01 * (np.array([0.5, 0.5]) +
                                                              0.1 * np.array([1.0, -2.0])))
  chex.assert_trees_all_close(upd["dense"]["bias"], -0.01 * np.array([0.5]))
  upd2, _ = tx.update(grads, state, params)
  d = np.array([0.5, 0.5]) + 0.1 * np.array([1.0, -2.0])
  chex.assert_trees_all_close(upd2["dense"]["kernel"], -0.01 * (0.9 * d + d), rtol=1e-6)


def test_lr_groups_scale_the_lr_of_their_params_only():
  """A 10x group on SGD+momentum and on AdamW: its updates are exactly 10x
  those of the same optimizer at 10x lr, the others' are unchanged."""
  params = {"conv": {"kernel": jnp.array([1.0, -2.0])},
            "quadratic": {"q": jnp.array([0.5, 3.0])}, "ln_hw": {"scale": jnp.array([1.0])}}
  grads = jax.tree.map(lambda p: 0.1 * p + 0.3, params)
  sched = optax.linear_schedule(0.1, 0.05, 10)
  for name in ("sgd", "adamw"):
    cfg = base_config().optimizer
    cfg.update(dict(name=name, weight_decay=0.01))
    plain, fast = make_optimizer(cfg, sched, params), make_optimizer(
        cfg, lambda s: 10 * sched(s), params)
    cfg.lr_groups = (("quadratic|ln_hw", 10.0),)
    grouped = make_optimizer(cfg, sched, params)
    states = [tx.init(params) for tx in (plain, fast, grouped)]
    for _ in range(3):    # several steps, so momentum and the schedule count
      outs = [tx.update(grads, st, params) for tx, st in zip((plain, fast, grouped), states)]
      states = [o[1] for o in outs]
      (u_plain, _), (u_fast, _), (u_group, _) = outs
      chex.assert_trees_all_close(u_group["conv"], u_plain["conv"], rtol=1e-6)
      chex.assert_trees_all_close(u_group["quadratic"], u_fast["quadratic"], rtol=1e-6)
      chex.assert_trees_all_close(u_group["ln_hw"], u_fast["ln_hw"], rtol=1e-6)
  cfg.lr_groups = (("nothing", 10.0),)
  with pytest.raises(ValueError, match=r"lr_groups\[0\]: 'nothing' matches no parameter"):
    make_optimizer(cfg, sched, params)


def test_lr_groups_validation_names_the_field():
  config = base_config()
  config.optimizer.lr_groups = (("quadratic", -1.0),)
  with pytest.raises(ConfigError, match=r"lr_groups\[0\]=.*\(regex, multiplier >= 0\) pair"):
    validate(config)
  config.optimizer.lr_groups = (("quad(", 10.0),)
  with pytest.raises(ConfigError, match=r"lr_groups\[0\]: 'quad\(' is not a valid regular"):
    validate(config)
