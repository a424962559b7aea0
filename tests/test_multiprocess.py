"""Two processes (jax.distributed + gloo) x 2 devices == 1 process x 4 devices."""

import subprocess

import chex
import jax
import portpicker

from cli import command, env, last_metrics, run
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
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      command(multi, *steps, "--config.distributed.num_processes=2",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.coordinator_address=localhost:{port}"),
      env=env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
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
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      command(multi, *args, "--config.distributed.num_processes=2",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.coordinator_address=localhost:{port}", config=config),
      env=env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  _, _, s1 = load_run(str(single / "heads" / "K"))
  _, _, s2 = load_run(str(multi / "heads" / "K"))
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s2.params),
                              rtol=1e-5, atol=1e-6)
  m1 = json.loads((single / "results.json").read_text())["heads"]["K"]["eval"]
  m2 = json.loads((multi / "results.json").read_text())["heads"]["K"]["eval"]
  chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)
