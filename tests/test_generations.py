"""The generational driver: resets, restarts and records per generation."""

import json

import chex
import numpy as np
import pytest

from neurojax.methods import generations

GENS = ["--config.method=generations", "--config.num_steps=16", "--config.batch_size=32",
        "--config.generations.num_generations=3", "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=1000", "--config.log_every_steps=1",
        "--config.schedule.warmup_epochs=0.5"]


@pytest.fixture(scope="module")
def dnr_run(tmp_path_factory):
  from cli import TINY, run
  workdir = tmp_path_factory.mktemp("dnr")
  proc = run(workdir, *GENS, "--config.generations.policy=dnr", "--config.model.width=4",
             config=TINY + ":resnet20")
  return workdir, proc


def test_dnr_resets_the_least_salient_fifth_each_generation(dnr_run):
  workdir, proc = dnr_run
  results = json.loads((workdir / "results.json").read_text())
  assert results["redraw"] == "torch_default"          # "original" for DNR
  rows = results["generations"]
  assert [r["generation"] for r in rows] == [0, 1, 2] and all(r["top1"] is not None for r in rows)
  masks = [generations.load_mask(str(workdir), g) for g in (1, 2)]
  assert generations.load_mask(str(workdir), 0) is None
  for row, mask in zip(rows[1:], masks):
    eligible = sum(m.size for m in mask.values())
    assert row["reset"] == eligible - round(0.8 * eligible)
    assert all(p.endswith("kernel") and "downsample" not in p for p in mask)
  assert rows[1]["overlap"] is None                 # nothing to compare with
  assert 0.5 < rows[2]["overlap"] < 1.0       # the mask moves between generations
  assert (workdir / "generations.png").stat().st_size > 10_000
  assert "generation" in proc.stdout and "overlap" in proc.stdout


def test_each_generation_restarts_the_schedule(dnr_run):
  workdir, _ = dnr_run
  lr = {}
  with open(workdir / "metrics.jsonl") as f:
    for line in f:
      r = json.loads(line)
      if "train/lr" in r:
        lr[r["step"]] = r["train/lr"]
  # Warm-up over 8 steps then cosine, restarting at steps 16 and 32.
  np.testing.assert_allclose([lr[1], lr[17], lr[33]], lr[1])
  np.testing.assert_allclose([lr[8], lr[24], lr[40]], lr[8])
  assert lr[1] < lr[8] and lr[16] < lr[8]


def test_bad_policy_is_refused_before_training(tmp_path):
  from cli import run
  proc = run(tmp_path / "w", "--config.method=generations",
             "--config.generations.policy=dnrr", check=False)
  assert proc.returncode != 0 and "dnr, ke, llf, layerwise, none" in proc.stderr


def test_the_redraw_resolves_per_policy_and_llf_keeps_biases_by_default():
  import types
  import jax
  from neurojax import models
  from neurojax.config import base_config
  config = base_config("lenet5")
  config.method = "generations"
  g = config.generations
  assert g.redraw == "original" and not g.llf_bias
  g.reset_layer = "fc1"
  expected = {"dnr": "torch_default", "ke": "torch_default", "llf": "torch_default",
              "layerwise": "model_init"}
  for policy, kind in expected.items():
    g.policy = policy
    generations.validate(config)
    assert generations.redraw_kind(g) == kind
    g.redraw = "zero"
    assert generations.redraw_kind(g) == "zero"
    g.redraw = "original"
  g.policy = "llf"
  params = jax.eval_shape(lambda k: models.get_model("lenet5", num_classes=10).init(
      k, jax.numpy.zeros((1, 28, 28, 1))), jax.random.PRNGKey(0))["params"]
  state = types.SimpleNamespace(params=params)
  for llf_bias in (False, True):
    g.llf_bias = llf_bias
    keep = generations._keep_mask(config, None, state, 1, 0)
    assert keep["fc1"]["kernel"] is not None and keep["conv2"]["kernel"] is None
    assert (keep["fc2"]["bias"] is not None) == llf_bias
  g.redraw = "kaiming"
  with pytest.raises(ValueError, match="generations.redraw='kaiming' is not valid; choose one "
                                       "of: original, torch_default, model_init, zero"):
    generations.validate(config)


def test_start_generation_regenerates_the_dropped_weights():
  import jax
  import optax
  from neurojax import models
  from neurojax import sparsity as sp
  from neurojax.train.state import create_train_state
  model = models.get_model("lenet_300_100", num_classes=10)
  tx = optax.sgd(0.1, momentum=0.9)
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
  grads = jax.tree.map(jax.numpy.ones_like, state.params)
  _, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(opt_state=opt_state)          # momentum is now nonzero
  fresh = create_train_state(model, tx, jax.random.PRNGKey(1), (8, 8, 1)).params
  keep = sp.global_topk(sp.magnitude(state.params, sp.dense_masks(state.params)), 0.8)
  new = generations.start_generation(state, keep, fresh)
  for layer in ("fc1", "fc2", "fc3"):
    m = np.asarray(keep[layer]["kernel"])
    old_w, fresh_w, new_w = (np.asarray(t[layer]["kernel"]) for t in (state.params, fresh,
                                                                      new.params))
    np.testing.assert_array_equal(new_w[m], old_w[m])
    np.testing.assert_array_equal(new_w[~m], fresh_w[~m])
    np.testing.assert_array_equal(np.asarray(new.params[layer]["bias"]),
                                  np.asarray(state.params[layer]["bias"]))   # not masked: kept
  same = generations.start_generation(state, None, fresh)       # policy "none"
  chex.assert_trees_all_equal(same.params, state.params)


def _final(workdir):
  import jax
  from neurojax.train.experiment import load_run
  _, _, state = load_run(str(workdir))
  return jax.device_get(state.params), int(state.step)


# DNR over 3 generations of 40 steps on the tiny MLP, a checkpoint every 10 steps.
RESUME = ["--config.method=generations", "--config.generations.policy=dnr",
          "--config.generations.num_generations=3", "--config.num_steps=40",
          "--config.checkpoint_every_steps=10", "--config.eval_every_steps=1000",
          "--config.log_every_steps=10"]


def test_killed_in_generation_3_resumes_to_the_same_result(tmp_path):
  import subprocess
  import sys
  from cli import ROOT, command, committed_steps, env, last_metrics, run
  reference = tmp_path / "reference"
  run(reference, *RESUME)
  workdir = tmp_path / "killed"
  # Generation 3 (index 2) runs steps 80..120: SIGKILL right after checkpoint 100.
  proc = subprocess.run([sys.executable, f"{ROOT}/tests/kill_at.py", "100",
                         *command(workdir, *RESUME)[3:]], env=env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert committed_steps(workdir)[-1] == 100
  run(workdir, *RESUME)
  params, step = _final(workdir)
  ref_params, ref_step = _final(reference)
  assert step == ref_step == 120
  chex.assert_trees_all_equal(params, ref_params)               # bit-identical
  assert last_metrics(workdir) == last_metrics(reference)
  got, want = ([{k: v for k, v in row.items() if k != "mask_seconds"}    # a timing
                 for row in json.loads((w / "results.json").read_text())["generations"]]
               for w in (workdir, reference))
  assert got == want
  for g in (1, 2):
    chex.assert_trees_all_equal(generations.load_mask(str(workdir), g),
                                generations.load_mask(str(reference), g))


def test_generation_keys_differ_and_follow_the_seed():
  keys = np.asarray(generations.generation_keys(0, 11))
  assert len({k.tobytes() for k in keys}) == 11
  np.testing.assert_array_equal(keys, np.asarray(generations.generation_keys(0, 11)))
  assert not np.array_equal(keys, np.asarray(generations.generation_keys(1, 11)))
  # A longer run draws the same keys for its first generations.
  np.testing.assert_array_equal(keys[:3], np.asarray(generations.generation_keys(0, 3)))


def _fake_run(path, policy, top1s, epochs=10.0):
  path.mkdir()
  rows = [{"generation": g, "top1": t, "reset": 0, "overlap": None} for g, t in enumerate(top1s)]
  (path / "results.json").write_text(json.dumps(
      {"policy": policy, "model": "resnet18", "epochs_per_generation": epochs,
       "generations": rows, "final_top1": top1s[-1]}))
  return str(path)


def test_generation_summary_averages_seeds(tmp_path):
  from neurojax import plots
  runs = [_fake_run(tmp_path / "d0", "dnr", [0.5, 0.7]), _fake_run(tmp_path / "d1", "dnr", [0.6, 0.8]),
          _fake_run(tmp_path / "long", "none", [0.65], epochs=20.0),
          _fake_run(tmp_path / "short", "none", [0.5])]
  rows = {r["method"]: r for r in plots.generation_summary(runs)}
  assert set(rows) == {"resnet18 dnr", "resnet18 one generation of 20 epochs",
                       "resnet18 one generation of 10 epochs"}
  dnr = rows["resnet18 dnr"]
  np.testing.assert_allclose([dnr["top1"], dnr["top1_std"]], [0.75, np.std([0.7, 0.8], ddof=1)])
  assert dnr["runs"] == 2 and dnr["epochs"] == 20 and dnr["curve_epochs"] == [10, 20]
  np.testing.assert_allclose(dnr["curve_top1"], [0.55, 0.75])
  out = plots.plot_generation_summary(list(rows.values()), str(tmp_path / "g.png"))
  assert (tmp_path / "g.png").stat().st_size > 10_000 and out.endswith("g.png")
  with pytest.raises(ValueError, match="different lengths"):
    plots.generation_summary(runs + [_fake_run(tmp_path / "d2", "dnr", [0.5, 0.6, 0.7])])
  with pytest.raises(SystemExit, match="of one method"):
    plots.main(["--out", str(tmp_path / "x.png"), runs[0], _prune_run(tmp_path / "p")])


def _prune_run(path):
  path.mkdir()
  (path / "results.json").write_text(json.dumps({"model": "lenet5", "rounds": []}))
  return str(path)


def test_dnr_flowers_config_runs_end_to_end(fake_flowers, tmp_path):
  """The headline command, `--config=configs/dnr_flowers.py`, on the fake
  Flowers102 (TFDS array_record), shrunk to seconds: 2 generations of 6
  steps of ResNet-18 (ImageNet stem, width 8) at 32 px."""
  from cli import ROOT, run
  config = f"{ROOT}/configs/dnr_flowers.py"
  proc = run(tmp_path, f"--config.data.data_dir={fake_flowers[0]}", "--config.data.image_size=32",
             "--config.data.eval_resize=36", "--config.model.width=8", "--config.batch_size=16",
             "--config.eval_batch_size=32", "--config.num_steps=6",
             "--config.generations.num_generations=2", "--config.eval_every_steps=1000",
             "--config.checkpoint_every_steps=1000", "--config.data.num_threads=2",
             config=config)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["policy"] == "dnr" and results["model"] == "resnet18"
  assert [r["generation"] for r in results["generations"]] == [0, 1]
  assert all(r["top1"] is not None for r in results["generations"])
  kept = generations.load_mask(str(tmp_path), 1)
  assert "layer1_0/conv1/kernel" in kept and "fc/kernel" in kept
  assert not any("downsample" in p for p in kept)
  assert "computing a mask takes" in proc.stdout


def test_overlap_is_undefined_when_nothing_is_kept():
  """LLF's keep mask covers only the layers it re-draws whole: nothing kept,
  so no overlap (not 0.0)."""
  from neurojax.methods.generations import _counts  # pylint: disable=g-import-not-at-top
  none = {"fc/kernel": np.zeros((2, 3), bool)}
  assert _counts(none, none) == (6, None)
  half = {"fc/kernel": np.array([[1, 1, 0], [0, 0, 0]], bool)}
  prev = {"fc/kernel": np.array([[1, 0, 0], [1, 0, 0]], bool)}
  assert _counts(half, prev) == (4, 0.5) and _counts(half, None) == (4, None)
