"""Every bad input ends with one line `neurojax: ...` that names the field or
path and the fix, a non-zero exit code, and nothing written.

Most cases call the checks in-process (`neurojax.config.validate`,
`check_writable_dir`, `idx_source`, the converter's `main`); a handful run the
CLI, where the one line on stderr is itself what is tested.
"""

import errno
import gzip
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli import ROOT, committed_steps, env, run
from neurojax import config as config_lib
from neurojax.config import ConfigError, base_config, validate
from neurojax.data import IdxFormatError, sources
from neurojax.train import workdir as workdir_lib
from neurojax.train.workdir import WorkdirError
from tiny_config import get_config as _tiny


def _set(config, field, value):
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


def _one_line(proc) -> str:
  """The last stderr line, after checking that the run failed cleanly."""
  assert proc.returncode != 0, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("neurojax: "), last
  return last


def _empty_or_absent(path) -> bool:
  return not os.path.exists(path) or os.listdir(path) == []


# ------------------------------------------------------- numbers in range


@pytest.mark.parametrize("field, value, expected", [
    ("optimizer.momentum", -3.0, r"config.optimizer.momentum=-3.0 must be in \[0, 1\)"),
    ("optimizer.momentum", 1.0, r"momentum=1.0 must be in \[0, 1\)"),
    ("optimizer.momentum", float("nan"), r"momentum=nan is not a finite number"),
    ("schedule.lr", float("nan"), r"config.schedule.lr=nan is not a finite number; it must be >= 0"),
    ("schedule.lr", float("inf"), r"config.schedule.lr=inf is not a finite number"),
    ("num_epochs", float("nan"), r"config.num_epochs=nan is not a finite number"),
    ("num_epochs", float("inf"), r"config.num_epochs=inf is not a finite number"),
    ("optimizer.b1", 1.0, r"config.optimizer.b1=1.0 must be in \[0, 1\)"),
    ("optimizer.b2", -0.5, r"config.optimizer.b2=-0.5 must be in \[0, 1\)"),
    ("optimizer.eps", 0.0, r"config.optimizer.eps=0.0 must be > 0"),
    ("optimizer.eps", float("inf"), r"config.optimizer.eps=inf is not a finite number"),
    ("optimizer.weight_decay", float("inf"), r"weight_decay=inf is not a finite number"),
    ("schedule.warmup_epochs", float("nan"), r"warmup_epochs=nan is not a finite number"),
    ("schedule.final_lr_fraction", 2.0, r"final_lr_fraction=2.0 must be in \[0, 1\]"),
    ("schedule.gamma", 0.0, r"config.schedule.gamma=0.0 must be > 0"),
    ("schedule.step_epochs", 0.0, r"config.schedule.step_epochs=0.0 must be > 0"),
    ("schedule.milestones", (30, -1), r"config.schedule.milestones\[1\]=-1 must be an epoch"),
    ("label_smoothing", float("nan"), r"label_smoothing=nan must be in \[0, 1\)"),
    ("mix.mixup_alpha", float("inf"), r"mix.mixup_alpha=inf is not a finite number"),
    ("ema_decay", float("nan"), r"ema_decay=nan must be in \[0, 1\)"),
    ("prune.retrain.epochs", float("nan"), r"config.prune.retrain.epochs=nan is not a finite"),
    ("prune.retrain.schedule.lr", float("inf"), r"prune.retrain.schedule.lr=inf is not a finite"),
    ("kakuritsu.pretrain.epochs", float("inf"), r"kakuritsu.pretrain.epochs=inf is not a finite"),
    ("generations.reset", float("nan"), r"config.generations.reset=nan is not a finite number"),
    ("distributed.process_id", 2, r"config.distributed.process_id=2 must be in \[0, 1\)"),
    ("optimizer.lr_groups", (("fc", float("inf")),), r"lr_groups\[0\]=.* must be a"),
    ("data.mean", (0.5, float("nan")), r"config.data.mean\[1\]=nan is not a finite number"),
    ("data.std", ("0.5",), r"config.data.std=\('0.5',\) must be a tuple of finite numbers"),
    ("data.randaugment_magnitude_std", float("inf"), r"randaugment_magnitude_std=inf"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints=0 must be > 0"),
])
def test_bad_numbers_are_refused_naming_the_field(field, value, expected):
  with pytest.raises(ConfigError, match=expected) as e:
    validate(_set(_tiny(), field, value))
  assert "\n" not in str(e.value)


def _method_config(method):
  config = _tiny("resnet18") if method == "kakuritsu" else _tiny()
  config.method = method
  if method == "kakuritsu":
    config.kakuritsu.backbone = "random"
  return config


# A method checks its own section (and config.sparsity, if it uses it).
@pytest.mark.parametrize("method, field, value, expected", [
    ("prune", "sparsity.quality", -1.0, r"config.sparsity.quality=-1.0 must be >= 0"),
    ("prune", "sparsity.snip_batches", -1, r"config.sparsity.snip_batches=-1 must be >= 0 "
                                           r"\(0: ceil\(steps per epoch / 32\)\)"),
    ("prune", "sparsity.include", "(", r"config.sparsity.include='\(' is not a valid regular"),
    ("prune", "prune.targets", (0.9, 0.5), r"config.prune.targets=\(0.9, 0.5\) must be increasing"),
    ("prune", "prune.retrain.epochs", 0.0, r"config.prune.retrain.epochs=0.0 must be > 0"),
    ("prune", "prune.retrain.schedule.lr", -0.1, r"config.prune.retrain.schedule.lr=-0.1 must be "
                                                 r">= 0"),
    ("prune", "prune.retrain.schedule.name", "linear",
     r"config.prune.retrain.schedule.name='linear' is not valid; choose one of: constant, cosine"),
    ("prune", "prune.retrain.schedule.milestones", (3, -1),
     r"config.prune.retrain.schedule.milestones\[1\]=-1 must be an epoch >= 0"),
    ("prune", "prune.retrain.schedule.final_lr_fraction", 2.0,
     r"config.prune.retrain.schedule.final_lr_fraction=2.0 must be in \[0, 1\]"),
    ("generations", "sparsity.snip_batches", -2, r"config.sparsity.snip_batches=-2 must be >= 0"),
    ("generations", "generations.reset", 1.0, r"config.generations.reset=1.0 must be in \[0, 1\): "
                                              r"the fraction of the eligible weights DNR re-draws"),
    ("generations", "generations.split_rate", 0.0, r"split_rate=0.0 must be in \(0, 1\]: the "
                                                   r"fraction of channels KE keeps"),
    ("kakuritsu", "kakuritsu.pretrain.epochs", -1.0, r"config.kakuritsu.pretrain.epochs=-1.0 must "
                                                     r"be >= 0"),
    ("kakuritsu", "kakuritsu.pretrain.schedule.lr", -0.1,
     r"config.kakuritsu.pretrain.schedule.lr=-0.1 must be >= 0"),
    ("kakuritsu", "kakuritsu.pretrain.schedule.gamma", 0.0,
     r"config.kakuritsu.pretrain.schedule.gamma=0.0 must be > 0"),
])
def test_a_methods_own_fields_are_checked_naming_the_field(method, field, value, expected):
  validate(_method_config(method))                       # the defaults pass
  with pytest.raises(ConfigError, match=expected) as e:
    validate(_set(_method_config(method), field, value))
  assert "\n" not in str(e.value)


def test_any_nan_is_refused_naming_the_field_and_its_default():
  # A field with no range check of its own here (the method checks it later).
  with pytest.raises(ConfigError, match=re.escape(
      "config.generations.split_rate=inf is not a finite number; NaN and inf are never valid "
      "config values (its default is 0.5)")):
    validate(_set(_tiny(), "generations.split_rate", float("inf")))
  config = base_config("convnext_tiny")        # a model option (its factory checks it)
  config.model.drop_path = float("nan")
  with pytest.raises(ConfigError, match=r"config.model.drop_path=nan must be in \[0, 1\)"):
    validate(config)


def test_the_defaults_and_the_edges_are_accepted():
  config = _tiny()
  for field, value in (("optimizer.momentum", 0.0), ("optimizer.b2", 0.0),
                       ("schedule.final_lr_fraction", 1.0), ("schedule.gamma", 1e20),
                       ("schedule.lr", 0.0), ("num_epochs", 0.0)):
    validate(_set(_tiny(), field, value))
  validate(config, device_count=8)        # 32 and 64 split over 8 devices


# ----------------------------------------------------- batch vs devices


@pytest.mark.parametrize("field, size, devices, expected", [
    ("batch_size", 36, 8, r"config.batch_size=36 must be a multiple of the number of devices "
                          r"\(8, all processes together\); try 32 or 40"),
    ("eval_batch_size", 100, 8, r"config.eval_batch_size=100 must be a multiple .*try 96 or 104"),
    ("batch_size", 4, 8, r"config.batch_size=4 must be a multiple .*try 8\."),
])
def test_batch_sizes_must_split_over_the_devices(field, size, devices, expected):
  config = _set(_tiny(), field, size)
  validate(config)                         # fine without a device count
  with pytest.raises(ConfigError, match=expected):
    validate(config, device_count=devices)
  with pytest.raises(ConfigError, match=expected):
    config_lib.check_device_count(config, devices)


# ---------------------------------------------------------- IDX files


def _write_idx(path, array, truncate=0):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  raw = header + array.tobytes()
  with gzip.open(path, "wb") as f:
    f.write(raw[:len(raw) - truncate])


def _idx_folder(folder, truncate_test_images):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for stem, n in (("train", 64), ("t10k", 20)):
    _write_idx(f"{folder}/{stem}-images-idx3-ubyte.gz",
               rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
               truncate=truncate_test_images if stem == "t10k" else 0)
    _write_idx(f"{folder}/{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
  return str(folder)


def test_a_truncated_idx_file_names_the_file_and_the_fix(tmp_path):
  folder = _idx_folder(tmp_path / "idx", truncate_test_images=100)
  sources.idx_source("fashion_mnist", "train", folder)        # the intact split loads
  with pytest.raises(IdxFormatError) as e:
    sources.idx_source("fashion_mnist", "test", folder)
  message = str(e.value)
  assert f"{folder}/t10k-images-idx3-ubyte.gz is corrupt or truncated" in message
  assert f"check config.data.data_dir={folder!r}" in message
  assert "dataset-fashion-mnist" in message and "\n" not in message


def test_a_truncated_file_in_the_debian_folder_says_reinstall(tmp_path, monkeypatch):
  folder = _idx_folder(tmp_path / "debian", truncate_test_images=100)
  monkeypatch.setattr(sources, "FASHION_MNIST_DIR", folder)
  monkeypatch.setitem(sources.IDX_DEFAULT_DIRS, "fashion_mnist", folder)
  with pytest.raises(IdxFormatError, match=re.escape(
      "Reinstall it with `apt-get install --reinstall dataset-fashion-mnist`")):
    sources.idx_source("fashion_mnist", "test")


# -------------------------------------------------------------- workdir


def test_a_workdir_is_created_and_left_clean(tmp_path):
  workdir = tmp_path / "a" / "b"
  created = workdir_lib.check_writable_dir(str(workdir))
  assert created == [str(workdir), str(tmp_path / "a")]
  assert os.listdir(workdir) == []          # the probe file is gone
  workdir_lib.remove_empty_dirs(created)
  assert os.listdir(tmp_path) == []


def test_a_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(WorkdirError, match=re.escape(
      f"--workdir={path} is an existing file, not a directory; pass a directory path")):
    workdir_lib.check_writable_dir(str(path))
  with pytest.raises(WorkdirError, match=re.escape(
      f"--workdir={path}/w: {path} is a file, not a directory")):   # ENOTDIR
    workdir_lib.check_writable_dir(str(path / "w"))
  assert path.read_text() == "x" and os.listdir(tmp_path) == ["file"]


def test_a_workdir_without_permission(tmp_path, monkeypatch):
  # Root ignores permission bits, so the probe's own call is made to fail.
  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
  monkeypatch.setattr(workdir_lib.tempfile, "mkstemp", refuse)
  workdir = tmp_path / "w"
  with pytest.raises(WorkdirError, match=re.escape(
      f"--workdir={workdir}: permission denied (cannot create or write files there)")):
    workdir_lib.check_writable_dir(str(workdir))
  assert not workdir.exists()               # the directory it made is removed again


@pytest.fixture
def tmpfs(tmp_path):
  """mount(size, *options) -> a fresh tmpfs (root only; skips otherwise)."""
  mounted = []

  def mount(size="1M", *options):
    if os.geteuid() != 0 or not shutil.which("mount"):
      pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / f"tmpfs{len(mounted)}"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)),
                           "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode:
      pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_workdir_on_a_read_only_disk(tmpfs):
  workdir = tmpfs("1M", "ro") / "w"
  with pytest.raises(WorkdirError, match=re.escape(
      f"--workdir={workdir} is on a read-only file system; pass a --workdir on a writable")):
    workdir_lib.check_writable_dir(str(workdir))


def test_a_workdir_on_a_full_disk(tmpfs):
  disk = tmpfs("1M")
  with pytest.raises(OSError) as filled:
    with open(disk / "filler", "wb") as f:
      while True:
        f.write(bytes(1 << 16))
  assert filled.value.errno == errno.ENOSPC
  with pytest.raises(WorkdirError, match=re.escape(
      f"--workdir={disk / 'w'}: no space left on device; free some space there or pass "
      f"another --workdir")):
    workdir_lib.check_writable_dir(str(disk / "w"))
  assert os.listdir(disk) == ["filler"]


def test_disk_full_is_recognised_in_what_libraries_raise():
  from neurojax import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(OSError) as real:      # a real ENOSPC, from /dev/full
    with open("/dev/full", "w") as f:
      f.write("x")
  assert main._disk_full(real.value).errno == errno.ENOSPC
  try:                                       # ... wrapped by a library
    try:
      raise real.value
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as wrapped:
    assert main._disk_full(wrapped).errno == errno.ENOSPC
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "params.fc1.kernel/0" in OCDBT '
                     'database at local file "/w/checkpoints/150.orbax-checkpoint-tmp/": Failed '
                     'to write 81206 bytes to file 17: No space left on device '
                     "[os_error_code='28']")
  assert main._disk_full(orbax).errno == errno.ENOSPC
  quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/w/metrics.jsonl")
  assert main._disk_full(quota).errno == errno.EDQUOT
  # An accelerator out of memory is RESOURCE_EXHAUSTED too, but not a full disk.
  assert main._disk_full(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                      "allocate 1.2GiB")) is None
  assert main._disk_full(ValueError("bad")) is None


# ----------------------------------------------------------- converter


def test_the_converter_refuses_an_out_that_is_a_file(tmp_path):
  from neurojax.convert import torchvision  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  out.write_text("not a directory")
  with pytest.raises(SystemExit) as e:
    torchvision.main(["--arch", "resnet18", "--state-dict", str(tmp_path / "none.pth"),
                      "--out", str(out)])
  assert str(e.value) == (f"neurojax.convert: --out={out} is an existing file, not a directory; "
                          f"pass a directory path (it is created if missing)")
  assert out.read_text() == "not a directory"


# ------------------------------------------------ the CLI: one line each


@pytest.mark.parametrize("overrides, devices, expected", [
    (["--config.optimizer.momentum=-3"], 1,
     r"^neurojax: bad config: config.optimizer.momentum=-3.0 must be in \[0, 1\)"),
    (["--config.schedule.lr=nan"], 1,
     r"^neurojax: bad config: config.schedule.lr=nan is not a finite number"),
    (["--config.batch_size=36"], 8,
     r"^neurojax: bad config: config.batch_size=36 must be a multiple of the number of devices "
     r"\(8, all processes together\); try 32 or 40\.$"),
])
def test_bad_values_end_with_one_line_and_write_nothing(tmp_path, overrides, devices, expected):
  workdir = tmp_path / "w"
  last = _one_line(run(workdir, *overrides, devices=devices, check=False))
  assert re.search(expected, last), last
  assert _empty_or_absent(workdir)


@pytest.mark.parametrize("override, new", [
    ("--config.generations.keep=0.8", "generations.reset, the fraction re-drawn (keep=0.8 is "
                                      "reset=0.2)"),
    ("--config.sparsity.retrain_epochs=2", "prune.retrain.epochs"),
    ("--config.kakuritsu.pretrain_lr=0.1", "kakuritsu.pretrain.schedule.lr"),
])
def test_a_renamed_field_ends_with_one_line_naming_the_new_one(tmp_path, override, new):
  workdir = tmp_path / "w"
  last = _one_line(run(workdir, override, check=False))
  field = override.split("=")[0]
  assert last.startswith(f"neurojax: bad config: {field}: unknown config field "
                         f"{field.split('.')[-1]!r}; it was renamed: use {new}; the fields here "
                         f"are: "), last
  assert not workdir.exists()


def _cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "neurojax.main", *args], env=env(),
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_config_files_that_cannot_be_used(tmp_path):
  proc = _cli("--config=configs/defualt.py", f"--workdir={tmp_path}/w")
  assert _one_line(proc) == ("neurojax: --config=configs/defualt.py does not exist; did you mean "
                             "--config=configs/default.py?")
  proc = _cli("--config=configs/nope.py", f"--workdir={tmp_path}/w")
  line = _one_line(proc)
  assert re.match(r"neurojax: --config=configs/nope.py does not exist; the configs in configs "
                  r"are: alexnet_cifar10.py, .*vgg16_cifar10.py$", line)     # all, sorted
  assert ", default.py, " in line
  no_function = tmp_path / "no_function.py"
  no_function.write_text("from neurojax.config import base_config\nCONFIG = base_config()\n")
  proc = _cli(f"--config={no_function}", f"--workdir={tmp_path}/w")
  assert _one_line(proc).startswith(f"neurojax: --config={no_function} has no get_config(); ")
  no_return = tmp_path / "no_return.py"
  no_return.write_text("def get_config():\n  pass\n")
  proc = _cli(f"--config={no_return}", f"--workdir={tmp_path}/w")
  assert _one_line(proc).startswith(f"neurojax: get_config() of --config={no_return} returned "
                                    f"None; ")
  assert not (tmp_path / "w").exists()


def test_a_workdir_that_is_a_file_ends_with_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  last = _one_line(run(path / "w", check=False))
  assert last == (f"neurojax: --workdir={path}/w: {path} is a file, not a directory; pass a "
                  f"directory path (it is created if missing)")


def test_a_truncated_idx_file_ends_with_one_line(tmp_path):
  folder = _idx_folder(tmp_path / "idx", truncate_test_images=100)
  workdir = tmp_path / "w"
  last = _one_line(run(workdir, "--config.data.source=idx", "--config.data.name=fashion_mnist",
                       f"--config.data.data_dir={folder}", check=False))
  assert last.startswith(f"neurojax: IdxFormatError: IDX file {folder}/t10k-images-idx3-ubyte.gz "
                         f"is corrupt or truncated")
  assert "dataset-fashion-mnist" in last
  assert not workdir.exists()               # the workdir it made, still empty, is removed


def test_a_disk_that_fills_up_during_the_run_ends_with_one_line(tmpfs):
  # Two checkpoints of the tiny model (~400 KB each) fit in 1 MB, a third does not.
  workdir = tmpfs("1M") / "w"
  proc = run(workdir, "--config.checkpoint_every_steps=20", check=False)
  last = _one_line(proc)
  assert last == (f"neurojax: --workdir={workdir}: no space left on device; free some space "
                  f"there or pass another --workdir; then re-run the same command to resume "
                  f"from the last checkpoint")
  assert "Event loop is closed" not in proc.stderr
  assert not re.search(r"^E\d{4} ", proc.stderr, re.M), proc.stderr[-3000:]  # no absl errors
  assert committed_steps(workdir)           # the checkpoints before it are kept
