"""Learning-rate schedules, in steps, built from epoch-based config fields.

- constant: `lr`.
- cosine: linear warm-up from 0 to `lr` over `warmup_epochs`, then cosine
  decay to `lr * final_lr_fraction` at the last step.
- multistep: `lr`, multiplied by `gamma` at each epoch in `milestones`
  (after an optional linear warm-up).
- step: `lr * gamma ** (epoch // step_epochs)`.
"""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "cosine", "multistep", "step")


def make_schedule(cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """`cfg` is `config.schedule` (name, lr, warmup_epochs, ...)."""
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  if cfg.name == "cosine" and not warmup:
    return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1), alpha=cfg.final_lr_fraction)
  if cfg.name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.final_lr_fraction)
  if cfg.name == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.name == "multistep":
    boundaries = {int(m * steps_per_epoch) - warmup: cfg.gamma for m in cfg.milestones}
    main = optax.piecewise_constant_schedule(cfg.lr, boundaries)
  elif cfg.name == "step":
    main = optax.exponential_decay(cfg.lr, transition_steps=int(cfg.step_epochs * steps_per_epoch),
                                   decay_rate=cfg.gamma, staircase=True)
  else:
    raise ValueError(f"config.schedule.name={cfg.name!r} is not one of {', '.join(SCHEDULES)}")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])
