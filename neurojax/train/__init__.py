"""Training: state, steps, the loop, schedules, losses, checkpoints, writers."""

from neurojax.train.checkpoint import Checkpointer, CheckpointError
from neurojax.train.experiment import Experiment, setup
from neurojax.train.loop import Hook, NonFiniteLossError, fit
from neurojax.train.schedules import make_schedule
from neurojax.train.state import TrainState, create_train_state
from neurojax.train.steps import (evaluate, eval_step_fn, jit_eval_step, jit_train_step,
                                  train_step_fn)

__all__ = ["Checkpointer", "CheckpointError", "Experiment", "Hook", "NonFiniteLossError",
           "TrainState", "create_train_state", "eval_step_fn", "evaluate", "fit",
           "jit_eval_step", "jit_train_step", "make_schedule", "setup", "train_step_fn"]
