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
  end, with the phase's `at_end(step, state)` hooks in between;
- at every epoch end in the phase, after the eval and before the
  checkpoint, calls its `epoch_end(step, state)` hooks (one may return a
  new state) and then asks `until(step, state)`: True ends the phase there
  (its `at_end` hooks run, it is checkpointed, the next phase starts at that
  step). So `num_steps` of a phase with `until` is its longest. The early
  end is kept in the checkpoints (`Experiment.phase_ends`), so a resumed run
  lays the phases out as the first one did.
The lr schedule of a phase counts from the phase's first step. On SIGTERM or
SIGINT (`train.preempt`) it checkpoints the current step and re-raises.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax

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
  epoch_end: Sequence[Callable[[int, TrainState], TrainState | None]] = ()
  until: Callable[[int, TrainState], bool] | None = None


def bounds(phases: Sequence[Phase], ends: dict | None = None) -> list[int]:
  """The first step of each phase, and the end of the last; `ends` ({phase
  name: step}) holds the phases that ended early (`Phase.until`)."""
  ends = ends or {}
  out = [0]
  for phase in phases:
    out.append(ends.get(phase.name, out[-1] + phase.num_steps))
  return out


def run(exp: Experiment, phases: Sequence[Phase], *, objective=None, evaluate=None,
        desc: str = "train") -> TrainState:
  """Runs (or resumes) `phases` to the end; returns the final state.
  `objective` is the method's (`steps.Objective`); `evaluate` its evaluator
  (default: `exp.evaluator(objective)`). Closes the experiment."""
  c = exp.config
  names = [p.name for p in phases]
  if len(set(names)) != len(names):
    raise ValueError(f"phase names must differ (they key the early ends): {names}")
  evaluate = evaluate or exp.evaluator(objective)
  edges = bounds(phases, exp.phase_ends)
  state = exp.state
  progress = exp.progress(desc, total=edges[-1])
  saved = []
  def save(step, state):
    exp.save(step, state)
    saved.append(step)
  try:
    for i, phase in enumerate(phases):
      edges = bounds(phases, exp.phase_ends)
      begin, end = edges[i], edges[i + 1]
      if int(state.step) >= end:
        continue
      if int(state.step) == begin and phase.enter is not None:
        state = exp.place(phase.enter(exp, state))     # the layout the step keeps
      tx, schedule = phase.optimizer(exp) if phase.optimizer else (exp.tx, exp.schedule)
      if int(state.step) == begin and phase.fresh_optimizer:
        state = exp.place(state.replace(opt_state=tx.init(state.params)))
      hooks = [Hook(exp.every(c.eval_every_steps), evaluate),
               *[Hook(exp.steps_per_epoch, fn, at_end=False) for fn in phase.epoch_end],
               *([Hook(exp.steps_per_epoch, _ender(exp, phase, end), at_end=False)]
                 if phase.until else []),
               *[Hook(0, fn) for fn in phase.at_end],
               Hook(exp.every(c.checkpoint_every_steps), save)]
      state = fit(state, train_step=exp.train_step(tx, objective),
                  batches=exp.data.train.batches(int(state.step)), mesh=exp.mesh,
                  num_steps=end, writer=exp.writer, log_every=c.log_every_steps,
                  progress=progress, hooks=hooks,
                  lr=lambda s, b=begin, f=schedule: jax.vmap(f)(s - b),
                  stop=lambda step, name=phase.name: exp.phase_ends.get(name) == step)
      if int(state.step) < end:           # ended early: always a checkpoint at the end
        if int(state.step) not in saved:
          save(int(state.step), state)
        progress.set_total(bounds(phases, exp.phase_ends)[-1])
  except preempt.Preempted as stop:
    if stop.step not in saved:
      save(stop.step, stop.state)
    raise
  finally:
    exp.close(progress)
  exp.state = state
  return state


def _ender(exp: Experiment, phase: Phase, end: int):
  """The epoch-end hook that asks `phase.until` and ends the phase early."""
  def hook(step: int, state: TrainState) -> None:
    if step < end and phase.until(step, state):
      exp.phase_ends[phase.name] = step     # before the checkpoint of this step
      for fn in phase.at_end:
        fn(step, state)
  return hook
