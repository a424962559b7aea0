"""Training: state, steps, the loop, phases, schedules, checkpoints, writers, reports."""

from neurojax.train.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from neurojax.train.experiment import Experiment, load_run, setup
from neurojax.train.loop import Hook, NonFiniteLossError, fit
from neurojax.train.phases import Phase
from neurojax.train.preempt import Preempted
from neurojax.train.schedules import make_schedule
from neurojax.train.state import TrainState, create_train_state
from neurojax.train.steps import (Objective, cross_entropy, evaluate, eval_step_fn,
                                  jit_eval_step, jit_train_step, train_step_fn)

__all__ = ["Checkpointer", "CheckpointError", "CheckpointMismatchError", "Experiment", "Hook",
           "NonFiniteLossError", "Objective", "Phase", "Preempted", "TrainState",
           "create_train_state", "cross_entropy", "eval_step_fn", "evaluate", "fit",
           "jit_eval_step", "jit_train_step", "load_run", "make_schedule", "setup",
           "train_step_fn"]
