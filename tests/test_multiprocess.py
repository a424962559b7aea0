"""Two processes (jax.distributed + gloo) x 2 devices == 1 process x 4 devices."""

import sys

import chex
import jax

from cli import command, last_metrics, run, run_together
from neurojax.train.experiment import load_run

STEPS = ["--config.num_steps=6", "--config.checkpoint_every_steps=3",
         "--config.eval_every_steps=3", "--config.log_every_steps=2"]


# The generational driver: its first generation is a plain supervised run
# (train, eval, checkpoint), and its SNIP scores, keep-masks and re-drawn
# weights are computed on global arrays, so they must agree across
# processes. (supervised.train itself runs multi-process in the Kakuritsu
# test below, which trains its heads with it.)
DNR = ["--config.method=generations", "--config.generations.policy=dnr",
       "--config.generations.num_generations=2"]


def test_two_processes_match_one(tmp_path):
  steps = STEPS + DNR
  total = 12
  single = tmp_path / "single"
  run(single, *steps, devices=4)

  multi = tmp_path / "multi"
  outputs = run_together(lambda port: [
      command(multi, *steps, "--config.distributed.num_processes=2",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.coordinator_address=localhost:{port}")
      for i in range(2)], devices=2)
  assert "process_count=2" in outputs[0][1] or "2 processes" in outputs[0][1]

  _, _, s1 = load_run(str(single))
  _, _, s2 = load_run(str(multi))
  assert int(s1.step) == int(s2.step) == total
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s2.params),
                              rtol=1e-5, atol=1e-6)
  m1, m2 = last_metrics(single), last_metrics(multi)
  assert m1.keys() == m2.keys()
  chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)


def test_kakuritsu_two_processes_match_one(tmp_path):
  """Head K on a random frozen backbone, then its eval matrix: the gates are
  drawn over the global batch, so 2 processes x 2 devices give 1 x 4's draws.
  (Training a backbone first is the supervised phase loop, which the DNR
  test above runs in 2 processes.)"""
  import json  # pylint: disable=g-import-not-at-top
  from cli import TINY  # pylint: disable=g-import-not-at-top
  args = ["--config.method=kakuritsu", "--config.model.width=4", "--config.num_steps=6",
          "--config.kakuritsu.backbone=random", "--config.kakuritsu.heads=('K',)",
          "--config.kakuritsu.hidden=16", "--config.checkpoint_every_steps=3",
          "--config.eval_every_steps=6"]
  config = TINY + ":resnet18"
  single = tmp_path / "single"
  run(single, *args, devices=4, config=config)
  multi = tmp_path / "multi"
  run_together(lambda port: [
      command(multi, *args, "--config.distributed.num_processes=2",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.coordinator_address=localhost:{port}", config=config)
      for i in range(2)], devices=2)
  _, _, s1 = load_run(str(single / "heads" / "K"))
  _, _, s2 = load_run(str(multi / "heads" / "K"))
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s2.params),
                              rtol=1e-5, atol=1e-6)
  m1 = json.loads((single / "results.json").read_text())["heads"]["K"]["eval"]
  m2 = json.loads((multi / "results.json").read_text())["heads"]["K"]["eval"]
  chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)


_ORBAX_OFF_THE_DEVICES = """
import sys, jax, ml_collections, numpy as np
from jax.experimental import multihost_utils
from neurojax import parallel
from neurojax.train import checkpoint
parallel.initialize(ml_collections.ConfigDict(dict(
    num_processes=2, process_id=int(sys.argv[1]), auto=False,
    coordinator_address=f"localhost:{sys.argv[2]}")))
def on_the_devices(*a, **k):
  raise AssertionError("a barrier ran as a device collective")
multihost_utils.process_allgather = on_the_devices   # what orbax's default barrier calls
ckpt = checkpoint.Checkpointer(sys.argv[3])          # async saves: barriers on orbax's thread
ckpt.save(1, {"w": np.ones(3, np.float32)}, {})
ckpt.wait()
ckpt.close()
print("saved", ckpt.all_steps())
"""


def test_orbax_barriers_wait_on_the_client_not_on_the_devices(tmp_path):
  """Orbax's default barrier is a device all-gather, run by its async-save
  thread while the main thread's train steps all-reduce: two processes can
  issue them in different orders and deadlock. parallel.initialize moves
  them to the distributed client."""
  outputs = run_together(
      lambda port: [[sys.executable, "-c", _ORBAX_OFF_THE_DEVICES, str(i), str(port),
                     str(tmp_path / "ck")] for i in range(2)], timeout=120)
  assert all("saved [1]" in out for out, _ in outputs), outputs
