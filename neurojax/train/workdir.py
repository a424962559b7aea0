"""What keeps a workdir whole when a cluster kills, re-submits or restarts a run.

* `acquire(workdir)`: one live run per workdir. A second run (a re-submitted
  job) stops at once with `WorkdirLockedError` naming the holder; the lock
  of a run that died (SIGKILL included) is taken over with a warning.
* `check_fresh_start(workdir, restart)`: when nothing could be restored, a
  workdir holding an earlier run's history is not silently started again
  from step 0 (`WorkdirHasHistoryError`); with `restart=True` the old
  history is moved to `<workdir>/history/<n>/`, nothing is deleted.
* `read_saved_config(path)`: config.json, or None if it is torn.
* `check_writable_dir(path)`: creates an output folder and proves it can be
  written (`WorkdirError`, one line naming the path and the fix), before
  anything is built; `os_error_message` words an OSError the same way.

No jax here: the caller decides which process does what (only process 0 of
a multi-process run takes the lock).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import sys
import tempfile

from absl import logging

LOCK_NAME = ".neurojax.lock"
HISTORY_DIR = "history"
# What check_fresh_start(restart=True) moves into history/<n>/.
HISTORY_ITEMS = ("metrics.jsonl", "tb", "results.json", "corrupt_checkpoints")
# flock errors meaning "this file system has no flock" (some network mounts).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class WorkdirStateError(RuntimeError):
  """A workdir's files stop a run; the message says what and the way out."""


class WorkdirLockedError(WorkdirStateError):
  """Another live run holds the workdir."""


class WorkdirHasHistoryError(WorkdirStateError):
  """Nothing to resume from, but an earlier run's history would be lost."""


# Locks this process holds, by lock-file path: acquire() is re-entrant, so a
# method that builds its experiment twice on one workdir does not lock itself out.
_HELD: dict[str, "WorkdirLock"] = {}


class WorkdirLock:
  """The lock on one workdir held by this process; `release()` (idempotent) frees it.

  Also a context manager: `with workdir.acquire(d): ...`.
  """

  def __init__(self, path: str, fd: int, holder: dict, use_flock: bool):
    self.path, self.holder = path, holder
    self._fd, self._use_flock, self._count, self._pid = fd, use_flock, 1, os.getpid()

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    """Frees the lock (after as many release() calls as acquire() calls)."""
    if self._fd is None or self._pid != os.getpid():   # released, or a forked child
      return
    self._count -= 1
    if self._count > 0:
      return
    fd, self._fd = self._fd, None
    _HELD.pop(self.path, None)
    try:
      if self._use_flock or _read_holder(fd).get("pid") == self._pid:
        os.ftruncate(fd, 0)      # an empty lock file: free, and not "left by a dead run"
      if self._use_flock:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str) -> WorkdirLock:
  """Takes `<workdir>/.neurojax.lock` for this process, or raises WorkdirLockedError.

  The lock is an exclusive `fcntl.flock` on that file, whose content is the
  holder's JSON (host, pid, start time, command). The OS drops a flock when
  its holder dies however it dies, so the lock of a killed run is free: it
  is taken over, with a warning naming the run that left it. On file
  systems without flock (some network mounts: flock fails with ENOLCK or
  EOPNOTSUPP) it falls back to a liveness check of the recorded holder: a
  lock recorded by a pid of this host that is not running is stale and
  taken over; any other recorded holder (a live pid, or another host, which
  cannot be checked) holds it. Re-entrant within a process.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.realpath(os.path.join(workdir, LOCK_NAME))
  held = _HELD.get(path)
  if held is not None and held.held and held._pid == os.getpid():
    held._count += 1
    return held
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    use_flock = True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLockedError(_locked_message(workdir, path, _read_holder(fd), True)) from None
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
      use_flock = False
      holder = _read_holder(fd)
      if holder and not _is_stale(holder):
        raise WorkdirLockedError(_locked_message(workdir, path, holder, False)) from None
    previous = _read_holder(fd)
    if previous:
      logging.warning("%s was left by a run that is gone (%s); taking it over.", path,
                      _describe_holder(previous))
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)[:1000], "flock": use_flock}
    data = (json.dumps(me) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    raise
  lock = WorkdirLock(path, fd, me, use_flock)
  _HELD[path] = lock
  return lock


def _read_holder(fd: int) -> dict:
  """The holder recorded in the lock file ({} if none; {"unreadable": text} if torn)."""
  size = os.fstat(fd).st_size
  text = os.pread(fd, min(size, 1 << 16), 0).decode("utf-8", errors="replace").strip()
  if not text:
    return {}
  try:
    holder = json.loads(text)
    return holder if isinstance(holder, dict) else {"unreadable": text[:200]}
  except ValueError:
    return {"unreadable": text[:200]}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:      # another user's process
    return True
  try:                         # a zombie (killed, not yet reaped) is dead
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


def _is_stale(holder: dict) -> bool:
  """Without flock: a recorded holder is stale if it is a dead pid of this host."""
  if "unreadable" in holder or not isinstance(holder.get("pid"), int):
    return True                # a torn record: its writer died writing it
  if holder.get("host") != socket.gethostname():
    return False               # cannot check another host: assume it is live
  return holder["pid"] == os.getpid() or not _pid_alive(holder["pid"])


def _describe_holder(holder: dict) -> str:
  if not holder:
    return "a run that is starting (it has not recorded itself yet)"
  if "unreadable" in holder:
    return f"unreadable record {holder['unreadable']!r}"
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}")


def _locked_message(workdir: str, path: str, holder: dict, use_flock: bool) -> str:
  message = (f"{workdir} is in use by another run: {_describe_holder(holder)} (lock file "
             f"{path}). A workdir has one live run at a time: wait for that run to end or stop "
             f"it, or use a new --workdir.")
  if (use_flock and holder.get("host") == socket.gethostname()
      and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])):
    message += (f" (pid {holder['pid']} is gone, but a process it started still holds the "
                f"lock; `fuser {path}` names it.)")
  elif not use_flock:
    message += (f" This file system has no flock: if that run is surely gone (its host is "
                f"down), delete {path}.")
  return message


def check_fresh_start(workdir: str, restart: bool, *, main_process: bool = True) -> str | None:
  """Call when no checkpoint was restored, before anything writes history.

  A workdir without an earlier run's history (metrics.jsonl records, a
  non-empty corrupt_checkpoints/, TensorBoard events in tb/) starts from
  step 0: returns None. With history, raises WorkdirHasHistoryError
  saying what is there and the ways out, unless `restart`: then (on the
  main process only) moves metrics.jsonl, tb/, results.json and
  corrupt_checkpoints/ into a new `<workdir>/history/<n>/` (n = 0, 1, ...;
  never overwritten) and returns that directory. Nothing is deleted.
  """
  found = _history(workdir)
  if not found:
    return None
  if not restart:
    raise WorkdirHasHistoryError(
        f"{workdir} holds an earlier run's history but no checkpoint to resume from "
        f"({'; '.join(found)}), so this run would start again from step 0 over it. To start "
        f"again from step 0 and keep the old history (moved to "
        f"{os.path.join(workdir, HISTORY_DIR, '<n>')}/), pass --config.restart=True; or use a "
        f"new --workdir.")
  if not main_process:
    return None
  n = 0
  while True:
    dest = os.path.join(workdir, HISTORY_DIR, str(n))
    try:
      os.makedirs(dest)
      break
    except FileExistsError:
      n += 1
  moved = []
  for name in HISTORY_ITEMS:
    source = os.path.join(workdir, name)
    if os.path.lexists(source):
      shutil.move(source, os.path.join(dest, name))
      moved.append(name)
  logging.warning("config.restart=True: starting %s again from step 0; the earlier run's "
                  "history (%s) was moved to %s: %s", workdir, "; ".join(found), dest,
                  ", ".join(moved))
  return dest


def _history(workdir: str) -> list[str]:
  """What of an earlier run is in `workdir`, in words (empty: nothing)."""
  found = []
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.isfile(metrics):
    steps = []
    with open(metrics, "rb") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict):
          steps.append(record.get("step"))
    if steps:
      last = max((s for s in steps if isinstance(s, int)), default=None)
      found.append(f"metrics.jsonl has {len(steps)} records" +
                   ("" if last is None else f", up to step {last}"))
  corrupt = os.path.join(workdir, "corrupt_checkpoints")
  if os.path.isdir(corrupt) and os.listdir(corrupt):
    k = len(os.listdir(corrupt))
    found.append(f"{k} checkpoint{'s' * (k != 1)} moved to corrupt_checkpoints/ as unreadable")
  if _has_events(os.path.join(workdir, "tb")):
    found.append("TensorBoard events in tb/")
  return found


def _has_events(tb_dir: str) -> bool:
  """Whether an event file under `tb_dir` holds more than its file-version
  header (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
  for root, _, files in os.walk(tb_dir):
    for name in files:
      if "tfevents" not in name:
        continue
      try:
        with open(os.path.join(root, name), "rb") as f:
          header = f.read(8)
          if len(header) == 8:
            f.seek(struct.unpack("<Q", header)[0] + 8, os.SEEK_CUR)   # crc, data, crc
            if len(f.read(8)) == 8:
              return True
      except OSError:
        continue
  return False


def read_saved_config(path: str) -> dict | None:
  """The flat config saved in `path` (config.json), or None.

  None without a word if there is no such file; None with a warning naming
  the file if it is truncated or undecodable (a run killed while writing it,
  a full disk), so the caller can fall back to the copy kept in a
  checkpoint's meta and write config.json again.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return None
  try:
    config = json.loads(data.decode("utf-8"))
    if not isinstance(config, dict):
      raise ValueError(f"a JSON {type(config).__name__}, not an object")
  except ValueError as e:
    logging.warning("%s is truncated or unreadable (%s); not using it.", path, e)
    return None
  return config


class WorkdirError(ValueError):
  """The workdir (or another output folder) cannot be created or written."""


def os_error_message(error: OSError, path: str, flag: str = "--workdir") -> str:
  """One line naming `path` (passed as `flag`) and the fix, for an OSError
  raised creating or writing it."""
  where = f"{flag}={path}"
  code = getattr(error, "errno", None)
  if code in (errno.ENOSPC, errno.EDQUOT):
    what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    return f"{where}: {what}; free some space there or pass another {flag}"
  if code == errno.EROFS:
    return f"{where} is on a read-only file system; pass a {flag} on a writable disk"
  if code in (errno.EACCES, errno.EPERM):
    return (f"{where}: permission denied (cannot create or write files there); pass a {flag} "
            f"you can write to, or fix its permissions")
  if code in (errno.ENOTDIR, errno.EEXIST):
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and existing != os.path.dirname(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      what = (f"{where} is an existing file, not a directory" if existing == os.path.abspath(path)
              else f"{where}: {existing} is a file, not a directory")
      return f"{what}; pass a directory path (it is created if missing)"
  return f"{where} cannot be written ({error.strerror or error}); pass another {flag}"


def remove_empty_dirs(dirs) -> None:
  """Removes `dirs` (deepest first) while they are empty: undoes
  `check_writable_dir` when a run stops before writing anything."""
  for d in dirs:
    try:
      os.rmdir(d)
    except OSError:
      return


def check_writable_dir(path: str, flag: str = "--workdir") -> list[str]:
  """Creates the directory `path` if needed and writes (and removes) a small
  file there, so that an unusable output folder stops a run before anything
  is built. Returns the directories it created, deepest first; raises
  WorkdirError with a one-line message naming `path` and the fix."""
  absolute = os.path.abspath(path)
  created, p = [], absolute
  while not os.path.lexists(p) and p != os.path.dirname(p):
    created.append(p)
    p = os.path.dirname(p)
  try:
    os.makedirs(absolute, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".neurojax-write-test-", dir=absolute)
    try:
      try:
        os.write(fd, b"\0" * 4096)
      finally:
        os.close(fd)
    finally:
      os.unlink(probe)
  except OSError as e:
    remove_empty_dirs(created)
    raise WorkdirError(os_error_message(e, path, flag)) from e
  return created
