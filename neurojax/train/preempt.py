"""Stopping cleanly on SIGTERM (preemption, a batch scheduler) and SIGINT.

`install()` (the CLI calls it) makes both signals set a flag instead of
killing the process. The training loop checks the flag after each step (in
a multi-process run, all processes agree at the next flush point, so they
stop at the same step); it then flushes the metrics and raises `Preempted`,
the phase loop writes a checkpoint at that step, and the CLI exits with one
line and code 128 + the signal's number. Re-running the same command resumes
from that exact step. A second SIGINT stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal

from absl import logging

_requested: int | None = None


class Preempted(Exception):
  """Raised by the loop at the step where a stop was requested."""

  def __init__(self, signum: int, step: int, state=None):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
    self.signum, self.step, self.state = signum, step, state

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def _handler(signum, frame):  # pylint: disable=unused-argument
  global _requested
  if _requested is not None and signum == signal.SIGINT:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt
  _requested = signum
  logging.warning("%s received: finishing the current step, then saving a checkpoint and "
                  "stopping%s", signal.Signals(signum).name,
                  " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")


def install() -> None:
  """Turns SIGTERM and SIGINT into a clean stop (main thread only)."""
  signal.signal(signal.SIGTERM, _handler)
  signal.signal(signal.SIGINT, _handler)


def requested() -> int | None:
  """The signal that asked this process to stop, or None."""
  return _requested


def request(signum: int = signal.SIGTERM) -> None:
  """Asks the loop to stop as a signal would (e.g. from a notebook or a test)."""
  global _requested
  _requested = signum


def clear() -> None:
  global _requested
  _requested = None
