"""The command line, end to end: errors, kill-and-resume, bad checkpoints, NaN."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from cli import TINY, command, committed_steps, env, last_metrics, run
from neurojax.train.experiment import load_run


def test_help_lists_flags():
  proc = subprocess.run(command("unused", "--help")[:3] + ["--help"], env=env(),
                        capture_output=True, text=True, timeout=120)
  assert "--config" in proc.stdout and "--workdir" in proc.stdout


@pytest.mark.parametrize("override,expected", [
    ("--config.scheduel.lr=0.1", r'unknown config field .scheduel.*fields here are:.*schedule'),
    ("--config.schedule.lrr=0.1", r"unknown config field .lrr.*final_lr_fraction, gamma, lr"),
    ("--config.model.name=resnet21", r"config.model.name='resnet21'.*lenet5, lenet_300_100"),
    ("--config.data.source=imagenet", r"config.data.source='imagenet'.*'idx', 'tfds'"),
    ("--config.method=dnr", r"config.method='dnr'.*supervised"),
    ("--config.optimizer.name=lamb", r"config.optimizer.name='lamb'.*sgd, adam, adamw"),
    ("--config.batch_size=-32", r"config.batch_size=-32 must be > 0"),
    ("--config.compute_dtype=fp8", r"config.compute_dtype='fp8'.*float32, bfloat16"),
    ("--config.method=bayes --config.bayes.prior=moped",
     r"prior='moped' centres the prior on trained weights: set config.bayes.init_from"),
])
def test_bad_config_fails_before_compiling(tmp_path, override, expected):
  proc = run(tmp_path / "w", *override.split(), check=False)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert __import__("re").search(expected, last), last
  assert not (tmp_path / "w" / "checkpoints").exists()   # nothing was built


def test_missing_dataset_says_how_to_get_it(tmp_path):
  proc = run(tmp_path / "w", "--config.data.source=idx", "--config.data.name=fashion_mnist",
             f"--config.data.data_dir={tmp_path}/nowhere", check=False)
  assert proc.returncode != 0 and "apt-get install dataset-fashion-mnist" in proc.stderr


def _final_params(workdir):
  _, _, state = load_run(str(workdir))
  return jax.device_get(state.params), int(state.step)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run(workdir)
  return workdir


def test_kill_and_resume_is_bit_identical(tmp_path, uninterrupted):
  workdir = tmp_path / "killed"
  args = ["--config.num_steps=800", "--config.checkpoint_every_steps=100",
          "--config.eval_every_steps=400"]
  reference = tmp_path / "reference"
  run(reference, *args)
  proc = subprocess.Popen(command(workdir, *args), env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not committed_steps(workdir) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = committed_steps(workdir)
  assert killed_at and killed_at[-1] < 800, f"the kill came too late: {killed_at}"
  proc = run(workdir, *args)
  params, step = _final_params(workdir)
  ref_params, ref_step = _final_params(reference)
  assert step == ref_step == 800
  chex.assert_trees_all_equal(params, ref_params)           # bit-identical
  assert last_metrics(workdir) == last_metrics(reference)  # the same last metrics
  results = json.loads((workdir / "results.json").read_text())
  assert results["resumed_from"] >= killed_at[-1]
  # 800 steps over 50 epochs, with evals and checkpoints: one compilation.
  assert json.loads((reference / "results.json").read_text())["train_step_compiles"] == 1


def test_an_fsdp_run_resumes_on_another_device_count(tmp_path, uninterrupted):
  """Sharded state (config.parallel.state="fsdp") on 8 devices, killed after
  its step-100 checkpoint, resumed on 2 devices (each leaf resharded from 8
  slices to 2): the run ends where the uninterrupted 1-device run does, up
  to the order of float sums."""
  workdir = tmp_path / "fsdp"
  fsdp = ["--config.parallel.state=fsdp", "--config.parallel.min_size=0"]
  proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(TINY), "kill_at.py"),
                         "100", *command(workdir, *fsdp)[3:]], env=env(8),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert committed_steps(workdir)[-1] == 100
  sizes = lambda stderr: re.search(r"train state: fsdp, ([\d.]+) MiB per device of ([\d.]+)",  # noqa: E731
                                   stderr).groups()
  per_device, total = map(float, sizes(proc.stderr))
  assert per_device < 0.7 * total         # 8 divides only the first kernel's 64 inputs
  proc = run(workdir, *fsdp, devices=2)
  assert "2 devices" in proc.stderr
  assert float(sizes(proc.stderr)[0]) < 0.55 * total     # 2 divide nearly every leaf
  params, step = _final_params(workdir)
  ref_params, ref_step = _final_params(uninterrupted)
  assert step == ref_step == 200
  chex.assert_trees_all_close(params, ref_params, rtol=1e-4, atol=1e-5)
  assert json.loads((workdir / "results.json").read_text())["resumed_from"] == 100


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, uninterrupted):
  workdir = tmp_path / "corrupt"
  shutil.copytree(uninterrupted, workdir)
  steps = committed_steps(workdir)
  assert steps == [100, 150, 200]
  # Garble every data file of the latest checkpoint's state.
  for root, _, files in os.walk(workdir / "checkpoints" / "200" / "state"):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.write(os.urandom(max(size, 16)))
  # And leave a half-written one that orbax never committed.
  (workdir / "checkpoints" / "250.orbax-checkpoint-tmp-1").mkdir()
  proc = run(workdir)
  assert "cannot be used" in proc.stderr
  assert os.path.isdir(workdir / "corrupt_checkpoints" / "200")   # kept, not deleted
  assert json.loads((workdir / "results.json").read_text())["resumed_from"] == 150
  chex.assert_trees_all_equal(_final_params(workdir)[0], _final_params(uninterrupted)[0])


def test_load_run_reads_past_a_bad_checkpoint_and_moves_nothing(tmp_path, uninterrupted):
  from neurojax.train.experiment import load_run
  workdir = tmp_path / "readonly"
  shutil.copytree(uninterrupted, workdir)
  meta = workdir / "checkpoints" / "200" / "meta" / "metadata"
  record = json.loads(meta.read_text())
  record["fingerprint"][3][0] += 1.0
  meta.write_text(json.dumps(record))
  _, _, state = load_run(str(workdir))
  assert int(state.step) == 150
  assert committed_steps(workdir) == [100, 150, 200]             # a reader moves nothing
  assert not os.path.exists(workdir / "corrupt_checkpoints")


def test_checkpoint_whose_values_changed_is_not_used(tmp_path, uninterrupted):
  workdir = tmp_path / "tampered"
  shutil.copytree(uninterrupted, workdir)
  meta = workdir / "checkpoints" / "200" / "meta" / "metadata"
  record = json.loads(meta.read_text())
  record["fingerprint"][3][0] += 1.0    # as if one leaf's values had changed
  meta.write_text(json.dumps(record))
  proc = run(workdir)
  assert "do not match the fingerprint" in proc.stderr
  assert json.loads((workdir / "results.json").read_text())["resumed_from"] == 150


def test_no_usable_checkpoint_is_a_clear_error(tmp_path, uninterrupted):
  workdir = tmp_path / "allbad"
  shutil.copytree(uninterrupted, workdir)
  for step in committed_steps(workdir):
    shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
  proc = run(workdir, check=False)
  assert proc.returncode != 0
  assert "no usable checkpoint" in proc.stderr and "Traceback" not in proc.stderr
  assert sorted(os.listdir(workdir / "corrupt_checkpoints")) == ["100", "150", "200"]
  # The same command again does not silently start from zero over the history ...
  proc = run(workdir, check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and last.startswith("neurojax: ") and "restart=True" in last
  assert (workdir / "metrics.jsonl").stat().st_size > 0
  # ... until asked to; the old history is kept in history/0.
  proc = run(workdir, "--config.restart=True")
  assert sorted(os.listdir(workdir / "history" / "0")) == [
      "corrupt_checkpoints", "metrics.jsonl", "results.json", "tb"]
  assert json.loads((workdir / "results.json").read_text())["resumed_from"] is None
  chex.assert_trees_all_equal(_final_params(workdir)[0], _final_params(uninterrupted)[0])


def test_a_torn_config_json_does_not_block_a_resume(tmp_path, uninterrupted):
  workdir = tmp_path / "torn"
  shutil.copytree(uninterrupted, workdir)
  config = workdir / "config.json"
  config.write_text(config.read_text()[:200])           # a full disk cut it short
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 200, "train/lo')                  # and the last metrics line
  proc = run(workdir)
  assert "config.json" in proc.stderr and "metrics.jsonl" in proc.stderr    # both warned
  assert json.loads(config.read_text()) == json.loads((uninterrupted / "config.json").read_text())
  proc = run(workdir, "--config.schedule.lr=0.5", check=False)   # still guards the config
  assert proc.returncode != 0 and "schedule.lr: 0.05 -> 0.5" in proc.stderr


def test_a_second_run_on_a_live_workdir_stops_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / "live"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from neurojax.train import workdir; "
       f"workdir.acquire({str(workdir)!r}); print('held', flush=True); time.sleep(120)"],
      env=env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    proc = run(workdir, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("neurojax: ") and str(holder.pid) in last
    assert not os.path.exists(workdir / "checkpoints") and not os.path.exists(workdir / "config.json")
  finally:
    holder.kill()
    holder.wait()
  run(workdir, "--config.num_steps=20")          # the lock of a killed run is taken over


def test_changed_config_refuses_to_resume(tmp_path, uninterrupted):
  workdir = tmp_path / "changed"
  shutil.copytree(uninterrupted, workdir)
  proc = run(workdir, "--config.schedule.lr=0.5", check=False)
  assert proc.returncode != 0
  assert "schedule.lr: 0.05 -> 0.5" in proc.stderr and "new --workdir" in proc.stderr


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path):
  # 16 steps per epoch; from epoch 1 the lr is 1e18, so the loss blows up
  # right after step 16.
  workdir = tmp_path / "nan"
  proc = run(workdir, "--config.schedule.name=step", "--config.schedule.step_epochs=1.0",
             "--config.schedule.gamma=1e20", "--config.checkpoint_every_steps=8",
             "--config.log_every_steps=1000", check=False)
  assert proc.returncode != 0
  message = proc.stderr.strip().splitlines()[-1]
  step = int(__import__("re").search(r"at step (\d+)", message).group(1))
  assert 16 < step <= 20, message
  assert "NonFiniteLossError" in message and "Traceback" not in proc.stderr
  kept = committed_steps(workdir)
  assert kept and kept[-1] < step
  _, _, state = load_run(str(workdir))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
