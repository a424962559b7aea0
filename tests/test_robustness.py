"""What a cluster does to a workdir: re-submitted jobs, kills, torn writes,
bad or foreign checkpoints. Small and fast: tiny arrays, no training."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neurojax.config import base_config
from neurojax.train import checkpoint as ckpt_lib
from neurojax.train import workdir as workdir_lib
from neurojax.train import writers
from neurojax.train.state import create_train_state

WORKDIR_PY = os.path.abspath(workdir_lib.__file__)
# A holder process: imports only workdir.py (not the jax-importing package).
HOLDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir", {WORKDIR_PY!r})
workdir = importlib.util.module_from_spec(spec); spec.loader.exec_module(workdir)
lock = workdir.acquire(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def _holder(path):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "holding"
  return proc


def _dead_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


# --- 1. the workdir lock ----------------------------------------------------------------------

def test_second_run_fails_naming_the_holder_and_a_killed_holders_lock_is_taken_over(
    tmp_path, caplog):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(workdir_lib.WorkdirLockedError) as e:
      workdir_lib.acquire(str(tmp_path))
    message = str(e.value)
    assert "\n" not in message
    assert f"pid {holder.pid} on host " in message and "started 20" in message
    assert "new --workdir" in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with caplog.at_level(logging.WARNING):
    lock = workdir_lib.acquire(str(tmp_path))
  assert f"pid {holder.pid}" in caplog.text and "taking it over" in caplog.text
  record = json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())
  assert record["pid"] == os.getpid() and record["flock"] is True
  lock.release()
  assert (tmp_path / workdir_lib.LOCK_NAME).read_text() == ""   # released cleanly: free


def test_lock_is_reentrant_in_a_process_and_release_is_idempotent(tmp_path, caplog):
  first = workdir_lib.acquire(str(tmp_path))
  second = workdir_lib.acquire(str(tmp_path))      # e.g. an experiment built twice
  assert second is first
  second.release()
  assert first.held
  first.release()
  first.release()
  assert not first.held
  with caplog.at_level(logging.WARNING):
    with workdir_lib.acquire(str(tmp_path)) as again:   # released cleanly: no warning
      assert again.held
  assert "taking it over" not in caplog.text


def _no_flock(monkeypatch):
  def flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(workdir_lib.fcntl, "flock", flock)


def _record(path, **holder):
  (path / workdir_lib.LOCK_NAME).write_text(json.dumps(holder))


def test_without_flock_a_dead_pid_of_this_host_is_stale_anything_else_holds(
    tmp_path, monkeypatch, caplog):
  _no_flock(monkeypatch)
  host = __import__("socket").gethostname()
  _record(tmp_path, host=host, pid=_dead_pid(), started="then")
  with caplog.at_level(logging.WARNING):
    lock = workdir_lib.acquire(str(tmp_path))
  assert "taking it over" in caplog.text
  assert json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())["flock"] is False
  lock.release()
  live = subprocess.Popen(["sleep", "60"])
  try:
    for record in (dict(host=host, pid=live.pid, started="now"),
                   dict(host="elsewhere", pid=_dead_pid(), started="now")):
      _record(tmp_path, **record)
      with pytest.raises(workdir_lib.WorkdirLockedError, match=rf"pid {record['pid']} on host "
                         rf"{record['host']}.*no flock: .*delete .*{workdir_lib.LOCK_NAME}"):
        workdir_lib.acquire(str(tmp_path))
  finally:
    live.kill()
    live.wait()


# --- 2. no silent restart from zero ------------------------------------------------------------

def _metrics(workdir, steps):
  with open(workdir / "metrics.jsonl", "w") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "train/loss": 1.0}) + "\n")


def test_fresh_start_over_history_is_refused_or_moves_it_aside(tmp_path):
  assert workdir_lib.check_fresh_start(str(tmp_path), restart=False) is None   # nothing there
  (tmp_path / "config.json").write_text("{}")
  assert workdir_lib.check_fresh_start(str(tmp_path), restart=False) is None
  _metrics(tmp_path, [10, 20, 30])
  (tmp_path / "corrupt_checkpoints" / "30").mkdir(parents=True)
  (tmp_path / "results.json").write_text("{}")
  with pytest.raises(workdir_lib.WorkdirHasHistoryError) as e:
    workdir_lib.check_fresh_start(str(tmp_path), restart=False)
  message = str(e.value)
  assert "\n" not in message
  assert "up to step 30" in message and "1 checkpoint moved to corrupt_checkpoints/" in message
  assert "--config.restart=True" in message and "new --workdir" in message
  assert (tmp_path / "metrics.jsonl").exists()                              # nothing touched
  # Another process of a multi-process run moves nothing.
  assert workdir_lib.check_fresh_start(str(tmp_path), True, main_process=False) is None
  assert (tmp_path / "metrics.jsonl").exists()
  dest = workdir_lib.check_fresh_start(str(tmp_path), restart=True)
  assert dest == str(tmp_path / "history" / "0")
  assert sorted(os.listdir(dest)) == ["corrupt_checkpoints", "metrics.jsonl", "results.json"]
  assert os.path.isdir(os.path.join(dest, "corrupt_checkpoints", "30"))
  assert not (tmp_path / "metrics.jsonl").exists()
  assert workdir_lib.check_fresh_start(str(tmp_path), restart=False) is None   # clean now
  _metrics(tmp_path, [5])
  assert workdir_lib.check_fresh_start(str(tmp_path), True) == str(tmp_path / "history" / "1")
  assert (tmp_path / "history" / "0" / "metrics.jsonl").exists()           # never overwritten


def test_tensorboard_events_are_history_an_empty_event_file_is_not(tmp_path):
  from tensorboardX import SummaryWriter
  SummaryWriter(str(tmp_path / "tb")).close()        # a run that died before its first scalar
  assert workdir_lib.check_fresh_start(str(tmp_path), restart=False) is None
  tb = SummaryWriter(str(tmp_path / "tb"))
  tb.add_scalar("train/loss", 1.0, 10)
  tb.close()
  with pytest.raises(workdir_lib.WorkdirHasHistoryError, match="TensorBoard events in tb/"):
    workdir_lib.check_fresh_start(str(tmp_path), restart=False)
  dest = workdir_lib.check_fresh_start(str(tmp_path), restart=True)
  assert os.listdir(dest) == ["tb"] and not (tmp_path / "tb").exists()


def test_restart_is_a_base_config_field():
  assert base_config().restart is False


# --- 3. torn writes ----------------------------------------------------------------------------

def test_torn_last_metrics_line_is_dropped_and_resume_trims_past_the_restored_step(
    tmp_path, caplog):
  _metrics(tmp_path, [10, 20, 30])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "train/lo')                 # killed mid-line
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [10, 20, 30]
  assert "metrics.jsonl: line 4 is incomplete" in caplog.text
  writer = writers.MetricWriter(str(tmp_path), resume_step=20, tensorboard=False)
  writer.write(30, {"loss": 0.5}, prefix="train/")
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [10, 20, 30]
  assert json.loads(lines[-1])["train/loss"] == 0.5


def test_complete_last_record_without_newline_is_kept(tmp_path):
  _metrics(tmp_path, [10])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 20, "x": 1.0}')                  # torn right before its newline
  writers.MetricWriter(str(tmp_path), resume_step=20, tensorboard=False).write(30, {"x": 2})
  assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [10, 20, 30]


def test_unreadable_metrics_line_in_the_middle_is_an_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(writers.MetricsFileError, match=r"metrics.jsonl: line 2 is not a metrics"):
    writers.read_metrics(str(tmp_path))
  with pytest.raises(workdir_lib.WorkdirStateError, match=r"line 2"):
    writers.MetricWriter(str(tmp_path), resume_step=3, tensorboard=False)


def test_writer_close_and_flush_are_idempotent(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), tensorboard=True)
  writer.write(1, {"a": 1.0})
  writer.flush()
  writer.close()
  writer.close()
  writer.flush()


def test_torn_config_json_reads_as_none_with_a_warning(tmp_path, caplog):
  path = tmp_path / "config.json"
  assert workdir_lib.read_saved_config(str(path)) is None                 # none there
  path.write_text(json.dumps({"seed": 0, "model.name": "lenet5"}))
  assert workdir_lib.read_saved_config(str(path)) == {"seed": 0, "model.name": "lenet5"}
  path.write_text('{"seed": 0, "model.na')
  with caplog.at_level(logging.WARNING):
    assert workdir_lib.read_saved_config(str(path)) is None
  assert f"{path} is truncated or unreadable" in caplog.text


# --- 4. and 5. checkpoints ---------------------------------------------------------------------

class _Mlp(nn.Module):
  width: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(2)(nn.relu(nn.Dense(self.width)(x)))


def _state(width=4, ema=False):
  return create_train_state(_Mlp(width), optax.sgd(0.1, 0.9), jax.random.PRNGKey(0), (3,),
                            ema=ema)


def _checkpointer(tmp_path):
  return ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)


def test_checkpoint_holding_nan_and_inf_restores(tmp_path):
  state = _state()
  kernel = state.params["Dense_0"]["kernel"].at[0, 0].set(jnp.nan).at[1, 1].set(-jnp.inf)
  state = state.replace(params={**state.params, "Dense_0": {**state.params["Dense_0"],
                                                            "kernel": kernel}})
  ck = _checkpointer(tmp_path)
  ck.save(5, state, {})
  restored, meta = _checkpointer(tmp_path).restore_latest(_state())
  assert meta["step"] == 5 and meta["fingerprint_kind"] == ckpt_lib.FINGERPRINT_KIND
  got = np.asarray(restored.params["Dense_0"]["kernel"])
  assert np.isnan(got[0, 0]) and got[1, 1] == -np.inf
  assert not (tmp_path / "corrupt_checkpoints").exists()
  ck.close()
  ck.close()      # idempotent
  ck.wait()       # and a no-op once closed


def test_checkpoint_whose_bytes_changed_is_rejected(tmp_path, caplog):
  # Incompressible bytes are stored verbatim, so a flipped byte is read back
  # without a read error: only the hash can tell.
  noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
  state = {"noise": jnp.asarray(noise), "w": jnp.ones((3,))}
  ck = _checkpointer(tmp_path)
  ck.save(1, state, {})
  ck.save(2, state, {})
  hits = []
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
    for name in files:
      data = open(os.path.join(root, name), "rb").read()
      if noise[:64].tobytes() in data:
        hits.append((os.path.join(root, name), data.index(noise[:64].tobytes())))
  assert len(hits) == 1, hits
  path, at = hits[0]
  data = bytearray(open(path, "rb").read())
  data[at + 1000] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with caplog.at_level(logging.WARNING):
    restored, meta = _checkpointer(tmp_path).restore_latest(state)
  assert meta["step"] == 1                                        # the one before
  np.testing.assert_array_equal(np.asarray(restored["noise"]), noise)
  assert "do not match the fingerprint saved with it (first at noise)" in caplog.text
  assert os.path.isdir(tmp_path / "corrupt_checkpoints" / "2")    # kept, not deleted


def test_checkpoint_with_the_old_fingerprint_is_read_without_the_value_check(tmp_path):
  state = _state()
  ck = _checkpointer(tmp_path)
  old = {"step": 3, "fingerprint": [[1.0, 2.0]] * len(jax.tree.leaves(state))}   # sums, wrong
  ck._manager.save(3, args=ckpt_lib.ocp.args.Composite(
      state=ckpt_lib.ocp.args.StandardSave(state), meta=ckpt_lib.ocp.args.JsonSave(old)))
  ck.wait()
  restored, meta = _checkpointer(tmp_path).restore_latest(_state())
  assert meta["step"] == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_fingerprint_is_equal_across_a_device_put_round_trip():
  state = _state()
  host = jax.device_get(state)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  other = jax.device_put(host, jax.devices()[-1])
  reference = ckpt_lib.fingerprint(state)
  assert all(len(h) == 4 and all(isinstance(w, int) for w in h) for h in reference)
  assert ckpt_lib.fingerprint(host) == ckpt_lib.fingerprint(replicated) == \
      ckpt_lib.fingerprint(other) == reference
  changed = state.replace(step=state.step + 1)
  assert ckpt_lib.fingerprint(changed)[0] != reference[0]
  assert ckpt_lib.fingerprint(changed)[1:] == reference[1:]


def test_checkpoint_of_another_model_is_a_mismatch_error_and_stays(tmp_path):
  ck = _checkpointer(tmp_path)
  ck.save(7, _state(width=4), {})
  for template, expected in (
      (_state(width=8), r"checkpoint 7 .* params/Dense_0/kernel has shape \(4, 2\) float32 in the "
                        r"checkpoint but shape \(8, 2\) float32 in the model \(and 5 more"),
      (_state(ema=True), r"the model has ema_params/Dense_0/bias \(shape \(2,\) float32\), "
                         r"the checkpoint does not \(and 3 more")):
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match=expected) as e:
      _checkpointer(tmp_path).restore_latest(template)
    assert "\n" not in str(e.value)
    assert "config.json" in str(e.value) and "new --workdir" in str(e.value)
    assert isinstance(e.value, ckpt_lib.CheckpointError)
  assert _checkpointer(tmp_path).all_steps() == [7]                # still in place
  assert not (tmp_path / "corrupt_checkpoints").exists()
  restored, _ = _checkpointer(tmp_path).restore_latest(_state(width=4))   # and still good
  assert restored.params["Dense_1"]["kernel"].shape == (3, 4)
