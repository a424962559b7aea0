"""Helpers for tests that run `python -m neurojax.main` in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny_config.py")


def env(devices: int = 1) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e["PYTHONFAULTHANDLER"] = "1"   # SIGABRT prints every thread's Python stack
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


def run_together(commands, devices=1, timeout=240, retries=1) -> list[tuple[str, str]]:
  """Runs the processes of one multi-process run, `commands(port)` with a
  free coordinator port, and returns their (stdout, stderr); fails if any
  exits non-zero. A hang is retried `retries` times on a new port (a rare
  hang of the 2-process runs on this 2-core machine; the processes' stacks
  are printed as a warning), and fails with them after that."""
  import portpicker  # pylint: disable=g-import-not-at-top
  # Output to files, not pipes: an unread pipe that fills up blocks its writer.
  files = []
  procs = []
  for c in commands(portpicker.pick_unused_port()):
    files.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))
    procs.append(subprocess.Popen(c, env=env(devices), stdout=files[-1][0], stderr=files[-1][1],
                                  text=True))
  deadline = time.monotonic() + timeout
  hung = []
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      hung.append(i)
      p.send_signal(signal.SIGABRT)   # PYTHONFAULTHANDLER: every thread's stack
  for p in procs:
    p.wait()
  outputs = []
  for out, err in files:
    out.seek(0)
    err.seek(0)
    outputs.append((out.read(), err.read()))
    out.close()
    err.close()
  stacks = "\n".join(f"--- process {i} of {len(procs)}, stderr:\n{err[-6000:]}"
                     for i, (_, err) in enumerate(outputs))
  if hung and retries:
    warnings.warn(f"processes {hung} hung for {timeout} s; retrying.\n{stacks}")
    return run_together(commands, devices, timeout, retries - 1)
  if hung or any(p.returncode for p in procs):
    why = (f"processes {hung} hung for {timeout} s" if hung else
           f"exit codes {[p.returncode for p in procs]}")
    raise AssertionError(f"{why}\n{stacks}")
  return outputs


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
