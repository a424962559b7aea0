"""method="kakuritsu": heads on a frozen backbone, backbone loading and the eval matrix."""

import json
import re
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from neurojax import models
from neurojax.config import ConfigError, load_config_file, validate
from neurojax.methods import kakuritsu
from neurojax.nn.gating import Gate, GatedHead, OnBackbone
from neurojax import losses
from neurojax.train import CheckpointError, optimizers
from neurojax.train.state import create_train_state
from neurojax.train.steps import train_step_fn
from tests import cli

SHAPE = (8, 8, 1)


def _config(**kakuritsu_fields):
  c = load_config_file(cli.TINY, "resnet18")
  c.method = "kakuritsu"
  c.model.width = 4
  c.kakuritsu.hidden = 16
  c.kakuritsu.update(kakuritsu_fields)
  return c


def _model(config, head="K"):
  return kakuritsu.head_model(config, head, num_classes=10)


def _state(model, freeze="^backbone/", key=0):
  cfg = ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, nesterov=False,
                                       weight_decay=1e-4, weight_decay_exclude="", freeze=freeze))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE))))
  tx = optimizers.make_optimizer(cfg, 0.1, params["params"])
  return tx, create_train_state(model, tx, jax.random.PRNGKey(key), SHAPE)


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(n, *SHAPE)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


@pytest.mark.parametrize("backbone_bn", ["batch", "running"])
def test_a_frozen_backbone_never_moves_and_the_head_trains(backbone_bn):
  model = _model(_config(backbone_bn=backbone_bn), "K")
  tx, state = _state(model)
  step = jax.jit(train_step_fn(model, tx))
  before = state
  for i in range(3):
    state, _ = step(state, _batch(seed=i))
  # Bit-identical backbone params; the head moved.
  chex.assert_trees_all_equal(state.params["backbone"], before.params["backbone"])
  assert not np.allclose(state.params["head"]["fc1"]["kernel"],
                         before.params["head"]["fc1"]["kernel"])
  # No optimizer state for the backbone: the momentum covers the head only.
  sizes = sum(x.size for x in jax.tree.leaves(state.opt_state))
  head = sum(x.size for x in jax.tree.leaves(state.params["head"]))
  assert head <= sizes < head + 10
  # BN in train mode updates the running statistics (as the original's
  # frozen backbone did); in "running" mode they stay.
  moved = not np.allclose(state.batch_stats["backbone"]["bn1"]["mean"],
                          before.batch_stats["backbone"]["bn1"]["mean"])
  assert moved == (backbone_bn == "batch")


def test_gate_impl_pallas_trains_the_k_head_as_xla_does():
  """config.kakuritsu.gate_impl reaches the head: the Pallas kernel (interpret
  mode here) gives the xla path's train step."""
  states = {}
  for impl in ("xla", "pallas"):
    model = _model(_config(gate_impl=impl), "K")
    assert model.head.impl == impl
    tx, state = _state(model)
    states[impl], _ = jax.jit(train_step_fn(model, tx))(state, _batch())
  chex.assert_trees_all_close(states["pallas"].params, states["xla"].params, rtol=1e-5,
                              atol=1e-6)


def test_no_gradient_reaches_a_frozen_backbone_but_one_does_when_trainable():
  def grads(train_backbone):
    model = _model(_config(train_backbone=train_backbone), "W")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
    batch = _batch()

    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, batch["image"], train=True,
                              mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return jax.grad(loss)(variables["params"])
  frozen, trainable = grads(False), grads(True)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(frozen["backbone"]))
  assert float(jnp.abs(trainable["backbone"]["conv1"]["kernel"]).max()) > 0.0
  chex.assert_trees_all_close(frozen["head"], trainable["head"], rtol=1e-5)


def test_the_heads_are_the_originals():
  config = _config()
  shapes = {}
  for head in kakuritsu.HEADS:
    model = _model(config, head)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, *SHAPE)))["params"]["head"]
    shapes[head] = jax.tree.map(jnp.shape, params)
    assert model.gate == kakuritsu.head_gates(config.kakuritsu)[head]
    bound = float(jnp.abs(params["fc2"]["kernel"]).max())
    # K: U(-0.1, 0.1); D and W: torch's Linear init, U(+-1/sqrt(16)).
    assert (0.09 < bound <= 0.1) if head == "K" else (0.2 < bound <= 0.25)
  features = 4 * 8     # resnet18 width 4: the last stage has 32 channels
  assert shapes["K"] == shapes["D"] == shapes["W"] == {
      "fc1": {"kernel": (features, 16)}, "fc2": {"kernel": (16, 10)}}


def test_eval_modes_switch_and_p1_are_the_plain_head():
  config = _config()
  model = _model(config, "K")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)))
  x = _batch()["image"]
  plain = model.apply(variables, x)                               # train=False: switch
  f = model.apply(variables, x, method="features")
  head = variables["params"]["head"]
  by_hand = jax.nn.relu(f @ head["fc1"]["kernel"]) @ head["fc2"]["kernel"]
  chex.assert_trees_all_close(plain, by_hand, atol=1e-6)
  at_p1 = model.apply(variables, x, gate=Gate("kakuritsu", 1.0))
  chex.assert_trees_all_equal(plain, at_p1)
  gated = model.apply(variables, x, gate=Gate("kakuritsu", 0.5), rngs={"gate": jax.random.key(1)})
  assert not np.allclose(gated, plain)


def test_eval_matrix_matches_a_direct_evaluation_and_is_deterministic():
  from neurojax import parallel
  from neurojax.data import build_data
  config = _config()
  data = build_data(config)
  model = _model(config, "D")
  tx, state = _state(model)
  step = jax.jit(train_step_fn(model, tx))
  for i in range(8):
    batch = data.train.batch(i)
    state, _ = step(state, {"image": batch["image"], "label": batch["label"]})
  mesh = parallel.make_mesh()
  gates = kakuritsu.eval_gates(config.kakuritsu, "D")
  first = kakuritsu.eval_matrix(model, state, data, mesh, gates, seed=0)
  again = kakuritsu.eval_matrix(model, state, data, mesh, gates, seed=0)
  assert first == again
  # "switch" by hand over the whole eval split.
  correct = total = 0
  predicted = set()
  for batch in data.eval.batches():
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"])
    predicted |= set(np.argmax(logits, -1)[batch["mask"] > 0].tolist())
    hit = losses.topk_correct(logits, batch["label"], 1) * batch["mask"]   # ties count
    correct, total = correct + hit.sum(), total + batch["mask"].sum()
  assert total == 100
  assert len(predicted) > 2                    # not a degenerate all-one-class model
  assert first["switch"]["top1"] == pytest.approx(float(correct / total), abs=1e-6)
  assert set(first) == {"own", "switch", "kakuritsu", "dropout"}
  # Another seed draws other gates: the random modes change, switch does not.
  other = kakuritsu.eval_matrix(model, state, data, mesh, gates, seed=1)
  assert other["switch"] == first["switch"]
  assert other["own"]["loss"] != first["own"]["loss"]


def _variables(config):
  model = models.build(kakuritsu.backbone_spec(config))
  return jax.device_get(dict(model.init(jax.random.PRNGKey(3), jnp.zeros((1, *SHAPE)))))


def test_backbone_from_a_converted_checkpoint_fills_the_state(tmp_path):
  from neurojax.convert import torchvision as convert
  config = _config()
  variables = _variables(config)
  with_fc = {**variables, "params": {**variables["params"], "fc": {"kernel": np.ones((32, 7))}}}
  convert.save(str(tmp_path / "ckpt"), with_fc, {"arch": "resnet18", "num_classes": 7})
  loaded = kakuritsu.load_backbone(str(tmp_path / "ckpt"), config)
  assert "fc" not in loaded["params"]                  # the classifier is dropped
  _, state = _state(_model(config))
  state = kakuritsu.with_backbone(state, loaded, "ckpt")
  chex.assert_trees_all_equal(state.params["backbone"], variables["params"])
  chex.assert_trees_all_equal(state.batch_stats["backbone"], variables["batch_stats"])

  config.model.name = "resnet34"
  with pytest.raises(kakuritsu.BackboneError, match="holds a resnet18.*model.name=resnet18"):
    kakuritsu.load_backbone(str(tmp_path / "ckpt"), config)


def test_a_backbone_that_does_not_fit_names_the_key(tmp_path):
  config = _config()
  variables = _variables(config)
  _, state = _state(_model(config))
  bad = jax.tree.map(lambda x: x, variables)
  bad["params"]["layer1_0"]["conv1"]["kernel"] = np.zeros((3, 3, 4, 5))
  with pytest.raises(kakuritsu.BackboneError,
                     match=r"params/layer1_0/conv1/kernel is of shape \(3, 3, 4, 5\)"):
    kakuritsu.with_backbone(state, bad, "x")
  missing = jax.tree.map(lambda x: x, variables)
  del missing["batch_stats"]["bn1"]
  with pytest.raises(kakuritsu.BackboneError, match="batch_stats/bn1/mean is missing"):
    kakuritsu.with_backbone(state, missing, "x")
  with pytest.raises(kakuritsu.BackboneError, match="not a directory"):
    kakuritsu.load_backbone(str(tmp_path / "nothing"), config)
  with pytest.raises(kakuritsu.BackboneError, match="neither a converted checkpoint"):
    kakuritsu.load_backbone(str(tmp_path), config)


@pytest.mark.parametrize("field, value, message", [
    ("heads", ("K", "X"), "non-empty subset"),
    ("backbone_bn", "eval", "backbone_bn='eval' is not valid"),
    ("p", 0.0, r"kakuritsu.p=0.0 must be in \(0, 1\]"),
    ("eval_dropout", 1.0, r"eval_dropout=1.0 must be in \[0, 1\)"),
    ("pretrain.schedule.name", "linear", r"kakuritsu.pretrain.schedule.name='linear' is not valid"),
    ("backbone", "", "random frozen backbone"),
    ("gate_impl", "cuda", "gate_impl='cuda' is not valid; choose one of: xla, pallas"),
])
def test_bad_kakuritsu_configs_are_refused(field, value, message):
  config = _config(backbone="random")
  *parents, leaf = field.split(".")
  node = config.kakuritsu
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_a_model_that_cannot_be_a_backbone_is_refused():
  config = _config(backbone="random")
  config.model = ml_collections.ConfigDict({"name": "lenet5"})
  with pytest.raises(ConfigError, match="'lenet5' cannot be a backbone; choose one of: .*resnet18"):
    validate(config)


def test_freeze_matching_nothing_is_an_error_and_decay_spares_frozen_params():
  params = {"backbone": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2), "bias": jnp.ones(2)}}
  cfg = ml_collections.ConfigDict(dict(name="sgd", momentum=0.0, nesterov=False,
                                       weight_decay=0.5, weight_decay_exclude="bias",
                                       freeze="^backbone/"))
  tx = optimizers.make_optimizer(cfg, 1.0, params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # Only the head's non-bias weight decays: -lr * wd * w.
  chex.assert_trees_all_equal(updates, {"backbone": {"w": jnp.zeros(3)},
                                        "head": {"w": -0.5 * jnp.ones(2), "bias": jnp.zeros(2)}})
  cfg.freeze = "^nothing/"
  with pytest.raises(ValueError, match="freeze='\\^nothing/' matches no parameter"):
    optimizers.make_optimizer(cfg, 1.0, params)


@pytest.fixture(scope="module")
def kakuritsu_run(tmp_path_factory):
  """The whole driver through the CLI on synthetic data: a backbone trained
  first, then K, D and W, then the eval matrix."""
  workdir = str(tmp_path_factory.mktemp("kakuritsu") / "run")
  overrides = ["--config.method=kakuritsu", "--config.model.width=4", "--config.num_steps=30",
               "--config.kakuritsu.pretrain.epochs=2", "--config.kakuritsu.hidden=16",
               "--config.checkpoint_every_steps=10", "--config.eval_every_steps=30"]
  proc = cli.run(workdir, *overrides, config=cli.TINY + ":resnet18")
  return workdir, overrides, proc


def test_one_command_gives_the_whole_eval_matrix(kakuritsu_run):
  workdir, _, proc = kakuritsu_run
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert list(results["heads"]) == ["K", "D", "W"]
  for head, entry in results["heads"].items():
    assert set(entry["eval"]) == {"own", "switch", "kakuritsu", "dropout"}
    for m in entry["eval"].values():
      assert 0.0 <= m["top1"] <= m["top5"] <= 1.0
  w = results["heads"]["W"]["eval"]
  assert w["own"] == w["switch"]                    # W's own gate is no gate
  k = results["heads"]["K"]["eval"]
  assert results["robustness"]["top1"] == pytest.approx(
      k["own"]["top1"] - w["kakuritsu"]["top1"])
  assert results["backbone"] == "pretrained here"
  # The backbone run was trained (on synthetic data it learns) and is what the
  # heads start from; every head has its own resumable run.
  with open(os.path.join(workdir, "backbone", "results.json")) as f:
    assert json.load(f)["final"]["top1"] > 0.5
  for head in "KDW":
    assert cli.committed_steps(os.path.join(workdir, "heads", head))[-1] == 30
  assert os.path.exists(os.path.join(workdir, "eval_matrix.png"))
  assert "Eval matrix, Acc1 / Acc5" in proc.stdout
  assert "K at p=0.5 minus W under Kakuritsu p=0.5" in proc.stdout


def test_load_run_reads_a_heads_run_and_reproduces_its_switch_accuracy(kakuritsu_run):
  from neurojax.data import build_data
  from neurojax.train.experiment import load_run
  workdir, _, _ = kakuritsu_run
  config, model, state = load_run(os.path.join(workdir, "heads", "K"))
  assert isinstance(model, OnBackbone) and model.gate == Gate("kakuritsu", 0.5)
  correct = total = 0
  for batch in build_data(config).eval.batches():
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"])
    correct += float(jnp.sum(losses.topk_correct(logits, batch["label"], 1) * batch["mask"]))
    total += float(batch["mask"].sum())
  with open(os.path.join(workdir, "results.json")) as f:
    switch = json.load(f)["heads"]["K"]["eval"]["switch"]["top1"]
  assert correct / total == pytest.approx(switch, abs=1e-6)
  with pytest.raises(CheckpointError, match="the runs inside it are: .*heads/K"):
    load_run(workdir)


def test_a_heads_run_rebuilds_from_its_workdir_without_the_methods(kakuritsu_run):
  import subprocess
  import sys
  workdir, _, _ = kakuritsu_run
  script = ("import sys; from neurojax.train import load_run; "
            f"_, model, state = load_run({os.path.join(workdir, 'heads', 'D')!r}); "
            "print(type(model).__name__, model.gate.kind, state.params['head']['fc1']['kernel'].shape,"
            " sorted(m for m in sys.modules if m.startswith('neurojax.methods')))")
  out = subprocess.run([sys.executable, "-c", script], env=cli.env(), capture_output=True,
                       text=True, timeout=300)
  assert out.stdout.split() == ["OnBackbone", "dropout", "(32,", "16)", "[]"], out.stderr[-2000:]


def test_other_eval_modes_on_a_finished_run_re_evaluate_without_training(kakuritsu_run,
                                                                         tmp_path):
  workdir, overrides, _ = kakuritsu_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  proc = cli.run(copy, *overrides, "--config.kakuritsu.eval_p=1.0",
                 "--config.kakuritsu.eval_dropout=0.0", config=cli.TINY + ":resnet18")
  assert proc.stdout.count("this run trained 0 of them") == 4     # backbone and 3 heads
  with open(os.path.join(copy, "results.json")) as f:
    heads = json.load(f)["heads"]
  with open(os.path.join(workdir, "results.json")) as f:
    before = json.load(f)["heads"]
  for head, entry in heads.items():
    # p=1 and dropout 0 are the switch mode exactly; the rest is unchanged.
    assert entry["eval"]["kakuritsu"] == entry["eval"]["switch"] == entry["eval"]["dropout"]
    assert entry["eval"]["own"] == before[head]["eval"]["own"]


def test_an_interrupted_head_resumes_to_the_same_matrix(kakuritsu_run, tmp_path):
  workdir, overrides, _ = kakuritsu_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  # As if killed during head D after its step-10 checkpoint: its later
  # checkpoints, W's run and the final results never happened.
  for step in (20, 30):
    shutil.rmtree(os.path.join(copy, "heads", "D", "checkpoints", str(step)))
  os.remove(os.path.join(copy, "heads", "D", "eval_matrix.json"))
  shutil.rmtree(os.path.join(copy, "heads", "W"))
  os.remove(os.path.join(copy, "results.json"))
  cli.run(copy, *overrides, config=cli.TINY + ":resnet18")
  with open(os.path.join(workdir, "results.json")) as f:
    expected = json.load(f)
  with open(os.path.join(copy, "results.json")) as f:
    resumed = json.load(f)
  for head in "KDW":
    assert resumed["heads"][head]["eval"] == expected["heads"][head]["eval"], head


def test_the_dummy_config_times_a_random_backbone(tmp_path):
  """The --dummy variant runs (shrunk to seconds: ResNet-18, 32 px, 2 steps, head W)."""
  config = os.path.join(cli.ROOT, "configs", "kakuritsu_imagenet_dummy.py")
  proc = cli.run(str(tmp_path / "dummy"), "--config.model.name=resnet18",
                 "--config.model.width=8",
                 "--config.data.synthetic_shape=(32,32,3)", "--config.data.image_size=32",
                 "--config.data.synthetic_train_size=64", "--config.data.synthetic_eval_size=10",
                 "--config.batch_size=8", "--config.eval_batch_size=10",
                 "--config.num_steps=2", "--config.kakuritsu.hidden=8", "--config.progress=False",
                 "--config.kakuritsu.heads=('W',)",
                 config=config)
  assert "train step time relative to W: W 1.00x" in proc.stdout
