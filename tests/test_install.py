"""`pip install .` gives a working `neurojax` command whose shipped configs
are found by name or by package path, from a directory outside the
repository. The package goes into a temporary target (no dependencies: they
are this venv's), so the test runs the installed files, not the checkout's."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  target = tmp_path_factory.mktemp("site")
  build = tmp_path_factory.mktemp("build")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
       "--target", str(target), ROOT],
      capture_output=True, text=True, timeout=300, cwd=build,
      env={**os.environ, "PIP_NO_INDEX": "1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return target


def _run(installed, cwd, *args):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(installed), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([os.path.join(installed, "bin", "neurojax"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_installed_package_ships_every_config(installed):
  shipped = sorted(n for n in os.listdir(os.path.join(installed, "neurojax", "configs"))
                   if n.endswith(".py"))
  here = sorted(n for n in os.listdir(os.path.join(ROOT, "neurojax", "configs"))
                if n.endswith(".py"))
  assert shipped == here and "dnr_flowers.py" in shipped
  assert os.path.exists(os.path.join(installed, "bin", "neurojax"))


def test_installed_command_runs_a_shipped_config_by_name(installed, tmp_path):
  workdir = tmp_path / "run"
  proc = _run(installed, tmp_path, "--config=dnr_fmnist", f"--workdir={workdir}",
              "--config.data.source=synthetic", "--config.data.num_classes=4",
              "--config.data.synthetic_shape=(8,8,1)", "--config.data.per_class=0",
              "--config.generations.num_generations=1", "--config.num_steps=2",
              "--config.batch_size=8", "--config.eval_batch_size=32", "--config.progress=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "config.json") as f:
    assert json.load(f)["generations.policy"] == "dnr"
  # The installed copy ran, not the checkout.
  probe = subprocess.run([sys.executable, "-c", "import neurojax.main as m; print(m.__file__)"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                         capture_output=True, text=True)
  assert probe.stdout.startswith(str(installed)), probe
  # By package path too, and a typo gets the closest shipped name.
  proc = _run(installed, tmp_path, "--config=neurojax/configs/dnr_fmnist.py",
              f"--workdir={workdir}", "--config.schedule.lrr=1")   # loaded, then refused
  assert "--config.schedule.lrr: unknown config field 'lrr'" in proc.stderr, proc.stderr[-2000:]
  proc = _run(installed, tmp_path, "--config=dnr_fmnsit", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "neurojax: --config=dnr_fmnsit does not exist; did you mean --config=dnr_fmnist "
      "(a shipped config)?")
