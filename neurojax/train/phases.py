"""The one phase loop: a method is a list of phases.

    phases = [Phase("dense", n0), Phase("round 1", n1, enter=prune, ...), ...]
    state = run(exp, phases)

Phases are laid end to end on one step counter, so checkpoints, metrics and
resume work across them as in any run. For each phase `run`
- skips it if the state is past its end (a resumed run);
- at its first step (never when resuming inside it) calls
  `enter(exp, state) -> state`, which may transform the state (prune,
  re-draw weights) or rebuild the experiment (`exp.rebuild(spec)`: a new
  model, new shapes, a new optimizer) and return a state for it;
- takes the phase's optimizer (`optimizer(exp) -> (tx, schedule)`, default
  the run's), and with `fresh_optimizer` restarts its state at the first step;
- trains to the phase's end (`loop.fit`), evaluating and checkpointing every
  `config.eval_every_steps` / `checkpoint_every_steps` and at the phase's
  end, with the phase's `at_end(step, state)` hooks in between.
The lr schedule of a phase counts from the phase's first step. On SIGTERM or
SIGINT (`train.preempt`) it checkpoints the current step and re-raises.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax

from neurojax import parallel
from neurojax.train import preempt
from neurojax.train.experiment import Experiment
from neurojax.train.loop import Hook, fit
from neurojax.train.state import TrainState


@dataclasses.dataclass
class Phase:
  """One stretch of training; see the module docstring."""
  name: str
  num_steps: int
  enter: Callable[[Experiment, TrainState], TrainState] | None = None
  optimizer: Callable[[Experiment], tuple] | None = None
  fresh_optimizer: bool = False
  at_end: Sequence[Callable[[int, TrainState], None]] = ()


def bounds(phases: Sequence[Phase]) -> list[int]:
  """The first step of each phase, and the end of the last."""
  out = [0]
  for phase in phases:
    out.append(out[-1] + phase.num_steps)
  return out


def run(exp: Experiment, phases: Sequence[Phase], *, objective=None, evaluate=None,
        desc: str = "train") -> TrainState:
  """Runs (or resumes) `phases` to the end; returns the final state.
  `objective` is the method's (`steps.Objective`); `evaluate` its evaluator
  (default: `exp.evaluator(objective)`). Closes the experiment."""
  c = exp.config
  evaluate = evaluate or exp.evaluator(objective)
  edges = bounds(phases)
  state = exp.state
  progress = exp.progress(desc, total=edges[-1])
  saved = []
  def save(step, state):
    exp.save(step, state)
    saved.append(step)
  try:
    for i, phase in enumerate(phases):
      begin, end = edges[i], edges[i + 1]
      if int(state.step) >= end:
        continue
      if int(state.step) == begin and phase.enter is not None:
        state = phase.enter(exp, state)
      tx, schedule = phase.optimizer(exp) if phase.optimizer else (exp.tx, exp.schedule)
      if int(state.step) == begin and phase.fresh_optimizer:
        state = jax.device_put(state.replace(opt_state=tx.init(state.params)),
                               parallel.replicated(exp.mesh))
      hooks = [Hook(exp.every(c.eval_every_steps), evaluate),
               *[Hook(0, fn) for fn in phase.at_end],
               Hook(exp.every(c.checkpoint_every_steps), save)]
      state = fit(state, train_step=exp.train_step(tx, objective),
                  batches=exp.data.train.batches(int(state.step)), mesh=exp.mesh,
                  num_steps=end, writer=exp.writer, log_every=c.log_every_steps,
                  progress=progress, hooks=hooks,
                  lr=lambda s, b=begin, f=schedule: jax.vmap(f)(s - b))
  except preempt.Preempted as stop:
    if stop.step not in saved:
      save(stop.step, stop.state)
    raise
  finally:
    exp.close(progress)
  exp.state = state
  return state
