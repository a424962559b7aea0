"""Train and eval steps, built once and jitted with explicit shardings.

The state is replicated and donated; batches are sharded on the `data`
axis. BatchNorm statistics are computed over the whole global batch (the
reductions see the global array), so 8 devices give the same numbers as 1.
Compute may be bf16 (the model's `dtype`) while params stay f32.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from neurojax import parallel
from neurojax.train import losses, mix as mix_lib
from neurojax.train.state import TrainState


def model_variables(params, batch_stats):
  """The variables dict `model.apply` takes."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step_fn(model, tx, *, label_smoothing: float = 0.0,
                  schedule: Callable | None = None, mix=None, ema_decay: float = 0.0):
  """The pure (unjitted) train step: `(state, batch) -> (state, metrics)`.

  The step's key is `fold_in(state.rng, state.step)`: the "dropout" RNG
  stream's, and folded with 1, the "gate" stream's (`nn.gating`), with 2
  the mixup/cutmix key (`mix` is `config.mix`; `train.mix`). With
  `ema_decay`, `state.ema_params <- d * ema_params + (1 - d) * params` after
  each optimizer update (with gradient accumulation, only at the steps where
  optax.MultiSteps applies one: its `mini_step` is back to 0). Metrics are global batch means: loss, top1 and top5 (of the
  unmixed labels) and (with `schedule`) lr.
  """
  mixing = mix is not None and mix_lib.enabled(mix)

  def step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    rngs = {"dropout": key, "gate": jax.random.fold_in(key, 1)}
    images, lam = batch["image"], None
    if mixing:
      images, lam = mix_lib.mix_batch(jax.random.fold_in(key, 2), images, mix)

    def loss_fn(params):
      logits, updates = model.apply(
          model_variables(params, state.batch_stats), images, train=True,
          rngs=rngs, mutable=["batch_stats"])
      if mixing:
        per_example = losses.mixed_cross_entropy(logits, batch["label"], lam, label_smoothing)
      else:
        per_example = losses.cross_entropy(logits, batch["label"], label_smoothing)
      return jnp.mean(per_example), (logits, per_example, updates)

    grads, (logits, per_example, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    # With masks in the state, `tx` must be `sparsity.masked(...)` (as
    # make_optimizer builds it): it holds pruned weights and moments at 0.
    extra = {} if state.masks is None else {"masks": state.masks}
    updates_tx, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates_tx)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
    if ema_decay:
      mini_step = optax.tree_utils.tree_get(opt_state, "mini_step")
      updated = True if mini_step is None else mini_step == 0
      new_state = new_state.replace(ema_params=jax.tree.map(
          lambda e, p: jnp.where(updated, ema_decay * e + (1 - ema_decay) * p, e),
          state.ema_params, params))
    sums = losses.metric_sums(logits, batch["label"], per_example, jnp.ones_like(per_example))
    metrics = {k: v / sums["count"] for k, v in sums.items() if k != "count"}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new_state, metrics
  return step


def eval_step_fn(model, ema: bool = False):
  """The pure eval step: `(state, batch) -> metric sums` (padded rows
  masked), of `state.ema_params` with `ema`, else of `state.params`."""
  def step(state: TrainState, batch):
    params = state.ema_params if ema else state.params
    logits = model.apply(model_variables(params, state.batch_stats), batch["image"],
                         train=False)
    per_example = losses.cross_entropy(logits, batch["label"])
    return losses.metric_sums(logits, batch["label"], per_example, batch["mask"])
  return step


def jit_train_step(step, mesh):
  """Jits a train step with replicated, donated state and `data`-sharded batches."""
  rep = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(rep, parallel.data_sharded(mesh)),
                 out_shardings=(rep, rep), donate_argnums=0)


def jit_eval_step(step, mesh):
  rep = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(rep, parallel.data_sharded(mesh)), out_shardings=rep)


def sum_over_batches(eval_step, state, batches, mesh, indexed: bool = False):
  """The sum over all eval batches of `eval_step(state, batch)` (with
  `indexed`, `eval_step(state, batch, index)`), a pytree of sums; they stay
  on device until the end."""
  totals = None
  for index, batch in enumerate(batches):
    extra = (jnp.int32(index),) if indexed else ()
    sums = eval_step(state, parallel.shard_batch(batch, mesh), *extra)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.device_get(totals)


def evaluate(eval_step, state, batches, mesh) -> dict:
  """Runs `eval_step` over all eval batches: the metric means."""
  return losses.means(sum_over_batches(eval_step, state, batches, mesh))
