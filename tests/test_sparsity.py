"""Masks, scores, selection, the masked optax wrapper, regeneration, stats."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neurojax import models, parallel
from neurojax import sparsity as sp
from neurojax.train import steps
from neurojax.train.checkpoint import Checkpointer
from neurojax.train.state import create_train_state


def _mlp_params(seed=0):
  m = models.get_model("lenet_300_100", num_classes=10)
  return m, jax.jit(m.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))["params"]


def test_default_filter_masks_kernels_only():
  _, params = _mlp_params()
  masks = sp.dense_masks(params)
  assert masks["fc1"]["bias"] is None and masks["fc1"]["kernel"].dtype == jnp.bool_
  assert sp.count(masks) == (784 * 300 + 300 * 100 + 100 * 10,) * 2
  masks = sp.dense_masks(params, exclude="fc3")
  assert masks["fc3"]["kernel"] is None


@pytest.mark.parametrize("name,make", [
    ("sgd+momentum", lambda: optax.sgd(0.05, momentum=0.9)),
    ("sgd+momentum+wd", lambda: optax.chain(optax.add_decayed_weights(1e-2),
                                             optax.sgd(0.05, momentum=0.9, nesterov=True))),
    ("adam", lambda: optax.adam(1e-3)),
    ("adamw", lambda: optax.adamw(1e-3, weight_decay=1e-2)),
])
def test_pruned_weights_and_moments_stay_exactly_zero(name, make):
  model, params = _mlp_params()
  tx = sp.masked(make())
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, 32)

  @jax.jit
  def step(params, opt_state, masks):
    def loss(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    u, opt_state = tx.update(g, opt_state, params, masks=masks)
    return optax.apply_updates(params, u), opt_state

  opt_state = tx.init(params)
  for _ in range(5):   # dense training first: the moments become nonzero
    params, opt_state = step(params, opt_state, sp.dense_masks(params))
  masks = sp.global_topk(sp.magnitude(params, sp.dense_masks(params)), 0.1)
  params = sp.apply(params, masks)
  for _ in range(100):
    params, opt_state = step(params, opt_state, masks)
  for m, w in zip(jax.tree.leaves(masks), [params[k]["kernel"] for k in ("fc1", "fc2", "fc3")]):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0), name
    assert np.any(np.asarray(w)[np.asarray(m)] != 0.0)
  # Every params-shaped part of the optimizer state is zero where pruned.
  full = sp.fill(masks, True)
  optax.tree_utils.tree_map_params(
      tx, lambda v, m: np.testing.assert_array_equal(np.asarray(v)[~np.asarray(m)], 0.0)
      if np.ndim(m) else None, opt_state, full)


def test_global_topk_keeps_exact_count_with_deterministic_ties():
  scores = {"a": jnp.ones((3, 4)), "b": None, "c": jnp.array([2.0, 1.0, 1.0, 0.5])}
  masks = sp.global_topk(scores, 0.5)          # 16 entries -> keep 8
  assert sp.count(masks) == (8, 16) and masks["b"] is None
  # c's 2.0 wins; the 7 remaining slots go to the first ties in tree order (a).
  np.testing.assert_array_equal(masks["a"].ravel(), [True] * 7 + [False] * 5)
  np.testing.assert_array_equal(masks["c"], [True, False, False, False])
  for density in (0.0, 0.083, 0.33, 1.0):
    _, params = _mlp_params()
    kept, total = sp.count(sp.global_topk(sp.magnitude(params, sp.dense_masks(params)), density))
    assert kept == round(density * total)
  with pytest.raises(ValueError, match="density"):
    sp.global_topk(scores, 1.5)


def test_per_layer_and_std_threshold():
  _, params = _mlp_params()
  masks = sp.per_layer_topk(sp.magnitude(params, sp.dense_masks(params)), 0.25)
  for m in jax.tree.leaves(masks):
    assert int(m.sum()) == round(0.25 * m.size)
  w = params["fc1"]["kernel"]
  han = sp.std_threshold(params, sp.dense_masks(params), quality=1.0)
  np.testing.assert_array_equal(han["fc1"]["kernel"], np.abs(w) > np.std(np.asarray(w)))


def test_snip_batch_count_is_a_32nd_of_an_epoch_by_default():
  # config.sparsity.snip_batches, for prune's SNIP score and DNR's mask.
  assert [sp.snip_batch_count(0, n) for n in (1, 31, 32, 33, 469)] == [1, 1, 1, 2, 15]
  assert sp.snip_batch_count(10, 469) == 10


def test_snip_matches_hand_computation():
  # y = W2 relu(W1 x); loss = 0.5 * sum((y - t)^2) per batch; g summed over batches.
  rng = np.random.default_rng(0)
  params = {"w1": rng.normal(size=(3, 4)), "w2": rng.normal(size=(4, 2))}
  batches = [(rng.normal(size=(5, 3)), rng.normal(size=(5, 2))) for _ in range(3)]

  def grad_fn(p, batch):
    x, t = batch
    return jax.grad(lambda p: 0.5 * jnp.sum((jax.nn.relu(x @ p["w1"]) @ p["w2"] - t) ** 2))(p)

  g1, g2 = np.zeros((3, 4)), np.zeros((4, 2))
  for x, t in batches:
    h = x @ params["w1"]
    a = np.maximum(h, 0)
    d = a @ params["w2"] - t
    g2 += a.T @ d
    g1 += x.T @ ((d @ params["w2"].T) * (h > 0))
  masks = {"w1": np.ones((3, 4), bool), "w2": np.ones((4, 2), bool)}
  s = sp.snip(grad_fn, params, batches, masks)
  np.testing.assert_allclose(s["w1"], np.abs(params["w1"] * g1), rtol=1e-5)
  np.testing.assert_allclose(s["w2"], np.abs(params["w2"] * g2), rtol=1e-5)


def test_fpgm_picks_the_filter_nearest_the_geometric_median():
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(6, 18))
  spread = 5.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
  filters = np.concatenate([spread, -spread, 0.01 * rng.normal(size=(1, 18))])   # 13 filters
  kernel = filters.T.reshape(3, 3, 2, 13)   # HWIO, output channel last
  scores = sp.fpgm({"k": kernel}, {"k": np.ones(kernel.shape, bool)})["k"]
  assert int(np.argmin(scores)) == 12
  keep = sp.channels({"k": scores}, {"k": np.ones(kernel.shape, bool)}, density=12 / 13)["k"]
  assert not keep[..., 12].any() and keep[..., :12].all()


def test_regenerate_keeps_kept_bits_and_redraws_the_rest():
  model, params = _mlp_params(0)
  _, fresh = _mlp_params(1)
  masks = sp.global_topk(sp.magnitude(params, sp.dense_masks(params)), 0.3)
  out = sp.regenerate(params, masks, fresh)
  for layer in ("fc1", "fc2", "fc3"):
    m = np.asarray(masks[layer]["kernel"])
    w, f, o = (np.asarray(t[layer]["kernel"]) for t in (params, fresh, out))
    np.testing.assert_array_equal(o[m], w[m])          # bit-identical
    np.testing.assert_array_equal(o[~m], f[~m])        # from the fresh init
    bound = 1 / np.sqrt(w.shape[0])                    # PyTorch's default init
    assert np.abs(o[~m]).max() <= bound
    np.testing.assert_array_equal(out[layer]["bias"], params[layer]["bias"])


def _masked_state(devices, model_name="resnet20", shape=(8, 8, 3), density=0.2):
  mesh = parallel.make_mesh(devices)
  model = models.get_model(model_name, num_classes=10)
  tx = sp.masked(optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9)))
  state = create_train_state(model, tx, jax.random.PRNGKey(0), shape, parallel.replicated(mesh))
  masks = sp.global_topk(sp.magnitude(state.params, sp.dense_masks(state.params)), density)
  state = state.replace(params=sp.apply(state.params, masks), masks=masks)
  return mesh, model, tx, jax.device_put(state, parallel.replicated(mesh))


def test_masked_step_on_8_devices_matches_1():
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  results = []
  # Half the weights: at density 0.2 this tiny ResNet-20 (8x8 images, batch
  # 16) has near-constant channels whose BN amplifies the 1e-7 differences
  # of 8 devices' summation order to 1% of a BN bias by step 3 (on AMD EPYC;
  # 1e-6 after step 1, and at densities 0.5 and 1).
  for devices in (jax.devices()[:1], jax.devices()):
    mesh, model, tx, state = _masked_state(devices, density=0.5)
    step = steps.jit_train_step(steps.train_step_fn(model, tx), mesh)
    for b in batches:
      state, metrics = step(state, parallel.shard_batch(b, mesh))
    results.append(jax.device_get((state.params, metrics)))
    masks = jax.device_get(state.masks)
    for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(sp.map_masked(
        lambda _, w: w, state.masks, jax.device_get(state.params)))):
      assert np.all(w[~m] == 0.0)
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_masked_checkpoint_restores_identical_masks(tmp_path):
  mesh, _, _, state = _masked_state(jax.devices()[:1], "lenet_300_100", (28, 28, 1))
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(7, state, {})
  target = state.replace(masks=jax.tree.map(jnp.zeros_like, state.masks))
  restored, _ = ckpt.restore_latest(target)
  chex.assert_trees_all_equal(jax.device_get(restored.masks), jax.device_get(state.masks))
  assert restored.masks["fc1"]["bias"] is None
  assert jax.tree.leaves(restored.masks)[0].dtype == jnp.bool_


def test_stats_table_counts_and_macs():
  model = models.get_model("lenet5", num_classes=10)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  masks = sp.per_layer_topk(sp.magnitude(variables["params"], sp.dense_masks(
      variables["params"])), 0.5)
  rows = sp.layer_stats(sp.apply(variables["params"], masks), masks, model, variables, (28, 28, 1))
  by = {r["layer"]: r for r in rows}
  assert by["conv1/kernel"]["macs"] == 24 * 24 * 5 * 5 * 20       # Han's LeNet-5: 2.3M MACs
  assert by["conv2/kernel"]["macs"] == 8 * 8 * 5 * 5 * 20 * 50
  total = sp.summary(rows)
  assert total["macs"] == 24 * 24 * 500 + 64 * 25000 + 400000 + 5000
  assert total["nonzero"] == 215_250 and total["compression"] == pytest.approx(2.0)
  assert "total" in sp.table(rows)


PRUNE = ["--config.method=prune", "--config.prune.targets=(0.5,0.9)",
         "--config.prune.retrain.epochs=10", "--config.num_steps=64",
         "--config.checkpoint_every_steps=16", "--config.eval_every_steps=160"]


def test_prune_method_end_to_end_and_resume(tmp_path):
  import json
  import signal
  import subprocess
  import time
  from cli import command, committed_steps, env, run
  from neurojax.train.experiment import load_run

  reference = tmp_path / "reference"
  run(reference, *PRUNE)
  results = json.loads((reference / "results.json").read_text())
  rounds = results["rounds"]
  assert [r["step"] for r in rounds] == [64, 224, 384]     # 16 steps per epoch
  assert [round(r["sparsity"], 6) for r in rounds] == [0.0, 0.5, 0.9]
  _, _, state = load_run(str(reference))
  params, masks = jax.device_get((state.params, state.masks))
  assert sp.count(masks)[0] == round(0.1 * sp.count(masks)[1])
  for m, w in zip(jax.tree.leaves(masks), [params[k]["kernel"] for k in ("fc1", "fc2", "fc3")]):
    assert np.all(w[~m] == 0.0)

  # Kill during round 2 and resume: the same final params and masks.
  killed = tmp_path / "killed"
  proc = subprocess.Popen(command(killed, *PRUNE), env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while (not committed_steps(killed) or committed_steps(killed)[-1] < 240) and \
      time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 240 <= committed_steps(killed)[-1] < 384
  run(killed, *PRUNE)
  _, _, resumed = load_run(str(killed))
  chex.assert_trees_all_equal(jax.device_get((resumed.params, resumed.masks)),
                              (params, masks))
  assert json.loads((killed / "results.json").read_text())["rounds"] == rounds


def _small_resnet(block_widths=()):
  model = models.get_model("resnet20", num_classes=5, width=4, block_widths=block_widths)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)     # non-trivial BN affine and running stats

  def perturb(path, x):
    name = path[-1].key
    if name in ("mean", "bias") and x.ndim == 1:
      return rng.normal(0.0, 0.2, x.shape).astype(np.float32)
    if name in ("var", "scale"):
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return np.asarray(x)
  return model, jax.tree_util.tree_map_with_path(perturb, variables)


def test_fpgm_channels_prune_whole_groups_and_never_revive():
  model, variables = _small_resnet()
  params = variables["params"]
  groups = models.channel_groups("resnet20", model)
  assert len(groups) == 9
  masks = sp.fpgm_channels(params, sp.group_masks(params, groups), groups, density=0.5)
  first = [np.asarray(sp.alive_channels(masks, g)) for g in groups]
  assert [int(a.sum()) for a in first] == [2, 2, 2, 4, 4, 4, 8, 8, 8]   # round(0.5 * C)
  block = masks["stage2_block1"]
  dead = ~first[4]
  assert not np.asarray(block["conv1"]["kernel"])[..., dead].any()      # the filters,
  assert not np.asarray(block["bn1"]["scale"])[dead].any()              # their BN affine,
  assert not np.asarray(block["bn1"]["bias"])[dead].any()
  assert not np.asarray(block["conv2"]["kernel"])[:, :, dead, :].any()  # and the next inputs
  assert np.asarray(block["conv2"]["kernel"])[:, :, ~dead, :].all()
  assert masks["conv1"]["kernel"] is None and masks["fc"]["kernel"] is None  # not in a group
  # A further step prunes within the survivors; pruned channels never come back.
  params = sp.apply(params, masks)
  again = sp.fpgm_channels(params, masks, groups, density=0.25)
  for a, g in zip(first, groups):
    b = np.asarray(sp.alive_channels(again, g))
    assert b.sum() == max(1, round(0.25 * a.size)) and not (b & ~a).any()


def test_fpgm_channels_drop_the_filter_nearest_the_median():
  model, variables = _small_resnet()
  params = jax.tree.map(np.copy, variables["params"])
  groups = models.channel_groups("resnet20", model)
  kernel = params["stage3_block0"]["conv1"]["kernel"]           # 3x3x8x16
  kernel[..., 5] = np.mean(kernel, axis=-1)                      # a filter at the centre
  masks = sp.fpgm_channels(params, sp.group_masks(params, groups), groups, density=15 / 16)
  alive = np.asarray(sp.alive_channels(masks, groups[6]))
  assert alive.sum() == 15 and not alive[5]


def test_slimmed_model_gives_the_masked_models_logits(tmp_path):
  model, variables = _small_resnet()
  groups = models.channel_groups("resnet20", model)
  masks = sp.fpgm_channels(variables["params"], sp.group_masks(variables["params"], groups),
                           groups, density=0.5)
  masked = {**variables, "params": sp.apply(variables["params"], masks)}
  slim, widths = sp.slim(masked, masks, groups)
  assert widths == [2, 2, 2, 4, 4, 4, 8, 8, 8]
  chex.assert_shape(slim["params"]["stage2_block0"]["conv1"]["kernel"], (3, 3, 4, 4))
  chex.assert_shape(slim["params"]["stage2_block0"]["conv2"]["kernel"], (3, 3, 4, 8))
  chex.assert_shape(slim["batch_stats"]["stage2_block0"]["bn1"]["mean"], (4,))
  spec = {"name": "resnet20", "num_classes": 5, "options": {"width": 4, "block_widths": widths}}
  loaded_model, loaded = sp.load_exported(sp.export(str(tmp_path / "slim"), spec, slim))
  x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32)
  ref = model.apply(masked, x, train=False)
  assert np.abs(ref - ref[0]).max() > 1e-2           # the logits depend on the input
  out = loaded_model.apply(loaded, x, train=False)
  chex.assert_trees_all_close(out, ref, atol=1e-5)
  n_slim = sum(x.size for x in jax.tree.leaves(loaded["params"]))
  n_dense = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n_slim < 0.6 * n_dense


def test_structured_pruning_needs_a_model_with_channel_groups():
  with pytest.raises(ValueError, match="declares no prunable channel groups.*resnet20"):
    models.channel_groups("lenet5", models.get_model("lenet5", num_classes=10))


def test_fpgm_method_exports_a_slim_model(tmp_path):
  import json
  from cli import TINY, run
  workdir = tmp_path / "fpgm"
  proc = run(workdir, "--config.method=prune", "--config.model.width=4",
             "--config.sparsity.score=fpgm", "--config.sparsity.selection=channels",
             "--config.prune.targets=(0.25,0.5)", "--config.prune.retrain.epochs=1",
             "--config.num_steps=16", "--config.eval_every_steps=1000", config=TINY + ":resnet20")
  results = json.loads((workdir / "results.json").read_text())
  slim = results["slim"]
  assert slim["widths"] == [2, 2, 2, 4, 4, 4, 8, 8, 8]
  macs = [r["macs_kept"] for r in results["rounds"]]
  assert macs[0] == 1.0 and 1.0 > macs[1] > macs[2] > 0.4
  assert "slimmed model" in proc.stdout
  model, variables = sp.load_exported(slim["directory"])
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == slim["params"]
  assert model.block_widths == tuple(slim["widths"])


def test_fpgm_method_refuses_a_model_without_channel_groups(tmp_path):
  from cli import run
  proc = run(tmp_path / "w", "--config.method=prune", "--config.sparsity.score=fpgm",
             "--config.sparsity.selection=channels", check=False)
  assert proc.returncode != 0
  assert "declares no prunable channel groups" in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def _fake_prune_run(path, top1s, targets=(0.0, 0.5), model="lenet5"):
  import json
  path.mkdir()
  rounds = [{"target": t, "sparsity": t, "compression": 1 / (1 - t), "top1": a}
            for t, a in zip(targets, top1s)]
  (path / "results.json").write_text(json.dumps(
      {"model": model, "score": "magnitude", "selection": "global", "rounds": rounds}))
  return str(path)


def test_pruning_curves_average_seeds_and_plot(tmp_path):
  from neurojax import plots
  runs = [_fake_prune_run(tmp_path / f"s{i}", a) for i, a in enumerate([(0.9, 0.8), (0.8, 0.6)])]
  runs.append(_fake_prune_run(tmp_path / "mlp", (0.5, 0.4), model="lenet_300_100"))
  curves = plots.pruning_curves(runs)
  assert list(curves) == ["lenet5 magnitude/global one-shot (n=2)",
                          "lenet_300_100 magnitude/global one-shot"]
  np.testing.assert_allclose([r["top1"] for r in curves["lenet5 magnitude/global one-shot (n=2)"]],
                             [0.85, 0.7])
  lenet5 = curves["lenet5 magnitude/global one-shot (n=2)"]
  np.testing.assert_allclose([r["top1_std"] for r in lenet5],
                             [0.05 * np.sqrt(2), 0.1 * np.sqrt(2)])   # sample std
  out = plots.plot_accuracy_vs_sparsity(curves, str(tmp_path / "p.png"))
  assert (tmp_path / "p.png").stat().st_size > 10_000 and out.endswith("p.png")
  odd = _fake_prune_run(tmp_path / "odd", (0.9, 0.8), targets=(0.0, 0.75))
  with pytest.raises(ValueError, match="different targets"):
    plots.pruning_curves(runs + [odd])
  with pytest.raises(FileNotFoundError, match="finished prune run"):
    plots.pruning_curves([str(tmp_path)])
