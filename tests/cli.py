"""Helpers for tests that run `python -m neurojax.main` in subprocesses."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny_config.py")


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  return e


def command(workdir, *overrides, config=TINY):
  return [sys.executable, "-m", "neurojax.main", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def run(workdir, *overrides, devices=1, config=TINY, check=True, timeout=300):
  proc = subprocess.run(command(workdir, *overrides, config=config), env=env(devices),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"neurojax.main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def last_metrics(workdir) -> dict:
  """The last train and eval records of metrics.jsonl, without timings."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.update({k: v for k, v in record.items()
                  if "images_per_sec" not in k and not k.endswith("_seconds")})
  return out


def committed_steps(workdir) -> list:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit() and
                os.path.exists(os.path.join(d, n, "commit_success.txt")))
