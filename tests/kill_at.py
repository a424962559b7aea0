"""`python tests/kill_at.py STEP <neurojax.main flags>`: neurojax.main that
SIGKILLs itself right after the checkpoint of step STEP is on disk (a
preemption with no warning at a known point of the run)."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neurojax import main  # noqa: E402
from neurojax.train import experiment  # noqa: E402

STEP = int(sys.argv.pop(1))
_save = experiment.Experiment.save


def _save_then_die(self, step, state):
  _save(self, step, state)
  if step == STEP:
    self.checkpointer.wait()
    os.kill(os.getpid(), signal.SIGKILL)


experiment.Experiment.save = _save_then_die

if __name__ == "__main__":
  main.run()
