"""Two processes (jax.distributed + gloo) x 2 devices == 1 process x 4 devices."""

import subprocess

import chex
import jax
import portpicker
import pytest

from cli import command, env, last_metrics, run
from neurojax.train.experiment import load_run

STEPS = ["--config.num_steps=6", "--config.checkpoint_every_steps=3",
         "--config.eval_every_steps=3", "--config.log_every_steps=2"]


# The generational driver too: its SNIP scores, keep-masks and re-drawn
# weights are computed on global arrays, and must agree across processes.
DNR = ["--config.method=generations", "--config.generations.policy=dnr",
       "--config.generations.num_generations=2"]


@pytest.mark.parametrize("method", [[], DNR], ids=["supervised", "dnr"])
def test_two_processes_match_one(tmp_path, method):
  steps = STEPS + method
  total = 12 if method else 6
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
