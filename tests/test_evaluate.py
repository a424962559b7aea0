"""`--mode=eval` (neurojax.evaluate) and `config.init_from`: evaluating a
finished, interrupted or converted run without touching its checkpoints, and
starting a run from another's weights."""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

import cli
from neurojax import evaluate, methods
from neurojax.config import load_config_file
from neurojax.train import init_from, load_run, setup
from neurojax.train.checkpoint import CheckpointError

TINY = os.path.join(os.path.dirname(__file__), "tiny_config.py")


def tiny(**overrides):
  c = load_config_file(TINY)
  c.num_steps, c.eval_every_steps, c.checkpoint_every_steps, c.log_every_steps = 8, 4, 4, 4
  c.ema_decay = 0.9
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def tree_digest(path):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    h.update(root.encode())
    for f in sorted(files):
      full = os.path.join(root, f)
      h.update(full.encode())
      with open(full, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def evals(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if "eval/top1" in r}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished 8-step run (EMA on) with checkpoints and evals at 4 and 8."""
  workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
  methods.get("supervised")(tiny(), workdir)
  return workdir


def test_eval_of_a_finished_run_equals_its_last_eval_and_touches_nothing(run_dir, tmp_path):
  # A save in progress (a live run): reading must leave its temporary directory alone.
  os.makedirs(os.path.join(run_dir, "checkpoints", "12.orbax-checkpoint-tmp-1733300000"))
  before = tree_digest(os.path.join(run_dir, "checkpoints"))
  out = str(tmp_path / "m.json")
  result = evaluate.run(tiny(), run_dir, out)
  assert tree_digest(os.path.join(run_dir, "checkpoints")) == before
  logged = evals(run_dir)[8]
  assert result["step"] == 8 and result["num_examples"] == 100
  for k in ("top1", "top5", "loss", "ece", "brier", "ema_top1", "ema_loss"):
    np.testing.assert_allclose(result["metrics"][k], logged[f"eval/{k}"], rtol=1e-5, err_msg=k)
  assert sum(result["reliability"]["count"]) == 100
  with open(out) as f:
    assert json.load(f) == json.loads(json.dumps(result))
  # Another split; the default output path.
  train = evaluate.run(tiny(**{"data.eval_split": "train"}), run_dir)
  assert train["num_examples"] == 512 and train["split"] == "train"
  assert os.path.exists(os.path.join(run_dir, "eval", "train-step8.json"))


def test_eval_of_an_interrupted_run_reads_its_newest_checkpoint(run_dir, tmp_path):
  copy = str(tmp_path / "cut")
  shutil.copytree(run_dir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "8"))
  result = evaluate.run(tiny(), copy)
  assert result["step"] == 4
  np.testing.assert_allclose(result["metrics"]["top1"], evals(run_dir)[4]["eval/top1"], rtol=1e-6)
  np.testing.assert_allclose(result["metrics"]["loss"], evals(run_dir)[4]["eval/loss"], rtol=1e-5)


def test_init_from_a_run_copies_every_weight_and_checks_the_fit(run_dir, tmp_path):
  _, _, source = load_run(run_dir)
  exp = setup(tiny(init_from=run_dir), str(tmp_path / "fine"))
  try:
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                              exp.state.params, source.params)
    assert all(jax.tree.leaves(chex_equal))
    assert all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        exp.state.ema_params, source.params)))     # the EMA starts at the loaded weights
    assert int(exp.state.step) == 0
  finally:
    exp.close()
  # Another number of classes: the classifier misfits, named ...
  with pytest.raises(init_from.InitFromError, match=r"params/fc3/bias is of shape \(10,\), not \(5,\)"):
    setup(tiny(init_from=run_dir, **{"data.num_classes": 5}), str(tmp_path / "misfit"))
  assert not os.path.exists(tmp_path / "misfit" / "config.json")   # a corrected retry can start
  # ... unless excluded: it keeps its fresh init, the rest is loaded.
  exp = setup(tiny(init_from=run_dir, init_from_exclude="^params/fc3/",
                   **{"data.num_classes": 5}), str(tmp_path / "five"))
  try:
    assert exp.state.params["fc3"]["kernel"].shape[-1] == 5
    np.testing.assert_array_equal(exp.state.params["fc1"]["kernel"],
                                  source.params["fc1"]["kernel"])
  finally:
    exp.close()


def test_bad_sources_fail_before_the_workdir_holds_anything(tmp_path):
  target = tmp_path / "new"
  with pytest.raises(init_from.InitFromError, match=r"config.init_from='/nonexistent' is neither"):
    setup(tiny(init_from="/nonexistent"), str(target))
  assert not target.exists()
  with pytest.raises(CheckpointError, match="has no readable config.json"):
    evaluate.run(tiny(), str(tmp_path / "empty"))


def test_eval_of_a_converted_checkpoint_through_init_from(run_dir, tmp_path):
  """A directory in the converter's format (variables + meta.json), read
  through config.init_from by an eval in an empty workdir, gives the
  source run's metrics."""
  from neurojax.convert import torchvision as tv  # pylint: disable=g-import-not-at-top
  _, _, state = load_run(run_dir)
  converted = str(tmp_path / "converted")
  tv.save(converted, jax.device_get({"params": state.params}), {"arch": "lenet_300_100"})
  result = evaluate.run(tiny(init_from=converted), str(tmp_path / "eval"))
  assert result["step"] == 0 and result["source"] == f"config.init_from={converted}"
  np.testing.assert_allclose(result["metrics"]["loss"], evals(run_dir)[8]["eval/loss"], rtol=1e-5)


def test_cli_eval_mode(run_dir, tmp_path):
  out = str(tmp_path / "cli.json")
  proc = cli.run(run_dir, "--mode=eval", f"--eval_out={out}")
  assert "top-1" in proc.stdout and f"wrote {out}" in proc.stdout
  with open(out) as f:
    np.testing.assert_allclose(json.load(f)["metrics"]["top1"], evals(run_dir)[8]["eval/top1"])
  proc = cli.run(str(tmp_path / "none"), "--mode=eval", check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("neurojax: CheckpointError:")
