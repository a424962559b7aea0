"""`pip install .` gives a `neurojax` command whose shipped configs are
found by name or by package path, from a directory outside the repository
(.ci/run also trains with it, installed with its dependencies into a fresh
venv). The package goes into a temporary target (no dependencies: they
are this venv's), so the test runs the installed files, not the checkout's."""

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


def test_installed_command_finds_the_shipped_configs(installed, tmp_path):
  """By name and by package path, from outside the repository: each config
  is loaded (an unknown field is then refused, naming the config's fields),
  so no run is needed here; .ci/run trains with a fresh venv's command."""
  workdir = tmp_path / "run"
  for config in ("dnr_fmnist", "dnr_cub200:ke", "neurojax/configs/dnr_fmnist.py"):
    proc = _run(installed, tmp_path, f"--config={config}", f"--workdir={workdir}",
                "--config.schedule.lrr=1")
    assert "--config.schedule.lrr: unknown config field 'lrr'; the fields here are: " in (
        proc.stderr), (config, proc.stderr[-2000:])
  assert not workdir.exists()
  # The installed copy ran, not the checkout.
  probe = subprocess.run([sys.executable, "-c", "import neurojax.main as m; print(m.__file__)"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                         capture_output=True, text=True)
  assert probe.stdout.startswith(str(installed)), probe
  proc = _run(installed, tmp_path, "--config=dnr_fmnsit", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "neurojax: --config=dnr_fmnsit does not exist; did you mean --config=dnr_fmnist "
      "(a shipped config)?")
