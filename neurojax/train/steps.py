"""Train and eval steps, assembled from the parts a method supplies, and
jitted with explicit shardings.

A method supplies an `Objective`: named loss terms `(params, outputs,
batch, state) -> scalar` (cross-entropy by default; a KL / N term, a second
cross-entropy over another logit set, ...), summed into the loss and each
logged as `loss_<name>`, and `logits(outputs)`, the logits that top-k and
the eval read from the model's outputs. The model declares its RNG streams
(`neurojax.rng`). The eval step takes a key and a number of samples and
averages the softmax over the samples (a Monte-Carlo eval), or evaluates
several predictions in one pass (`predict` returning {name: logits}).

The state is donated, and replicated or sharded as `parallel.Rules` say;
batches are sharded on the `data` axis. BatchNorm statistics are computed
over the whole global batch (the reductions see the global array), so 8
devices give the same numbers as 1.
Compute may be bf16 (the model's `dtype`) while params stay f32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from neurojax import parallel, rng as rng_lib
from neurojax import losses
from neurojax.train import mix as mix_lib
from neurojax.train.state import TrainState, create_train_state

# (params, model outputs, batch, state) -> scalar. The batch holds "image"
# (mixed, with mixup/cutmix), "label" and, when mixed, "mix_lam".
Term = Callable[[Any, Any, dict, TrainState], jax.Array]


def _identity(outputs):
  return outputs


def cross_entropy(label_smoothing: float = 0.0, logits: Callable = _identity) -> Term:
  """The mean cross-entropy of `logits(outputs)` (against the mixed targets
  when the batch was mixed), with label smoothing."""
  def term(params, outputs, batch, state):
    del params, state
    z = logits(outputs)
    if "mix_lam" in batch:
      per_example = losses.mixed_cross_entropy(z, batch["label"], batch["mix_lam"],
                                               label_smoothing)
    else:
      per_example = losses.cross_entropy(z, batch["label"], label_smoothing)
    return jnp.mean(per_example)
  return term


@dataclasses.dataclass(frozen=True)
class Objective:
  """The loss terms of a method (summed; each logged as `loss_<name>`) and
  how to read the logits from the model's outputs."""
  terms: Mapping[str, Term]
  logits: Callable[[Any], jax.Array] = _identity

  @classmethod
  def default(cls, label_smoothing: float = 0.0) -> "Objective":
    return cls({"ce": cross_entropy(label_smoothing)})


def model_variables(params, batch_stats):
  """The variables dict `model.apply` takes."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step_fn(model, tx, *, label_smoothing: float = 0.0, objective: Objective | None = None,
                  schedule: Callable | None = None, mix=None, ema_decay: float = 0.0,
                  streams=None):
  """The pure (unjitted) train step: `(state, batch) -> (state, metrics)`.

  The loss is the sum of `objective`'s terms (default: cross-entropy with
  `label_smoothing`). The step's key is `fold_in(state.rng, state.step)`;
  the model gets the RNG `streams` it declares (`neurojax.rng`), and the
  mixup/cutmix key is the "mix" stream's (`mix` is `config.mix`;
  `train.mix`). With `ema_decay`, `state.ema_params <- d * ema_params +
  (1 - d) * params` after each optimizer update (with gradient accumulation,
  only at the steps where optax.MultiSteps applies one: its `mini_step` is
  back to 0). Metrics are global batch means: loss, each term as
  `loss_<name>`, top1 and top5 (of the unmixed labels) and (with
  `schedule`) lr.
  """
  objective = objective or Objective.default(label_smoothing)
  streams = rng_lib.model_streams(model) if streams is None else tuple(streams)
  mixing = mix is not None and mix_lib.enabled(mix)

  def step(state: TrainState, batch):
    key = rng_lib.step_key(state.rng, state.step)
    rngs = rng_lib.stream_keys(key, streams)
    batch = dict(batch)
    if mixing:
      batch["image"], batch["mix_lam"] = mix_lib.mix_batch(
          rng_lib.stream_keys(key, ("mix",))["mix"], batch["image"], mix)

    def loss_fn(params):
      outputs, updates = model.apply(
          model_variables(params, state.batch_stats), batch["image"], train=True,
          rngs=rngs, mutable=["batch_stats"])
      values = {name: term(params, outputs, batch, state)
                for name, term in objective.terms.items()}
      total = functools.reduce(jnp.add, values.values())
      return total, (outputs, total, values, updates)

    grads, (outputs, total, values, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
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
    logits = objective.logits(outputs)
    metrics = {"loss": total, **{f"loss_{name}": v for name, v in values.items()},
               **{f"top{k}": jnp.mean(losses.topk_correct(logits, batch["label"], k))
                  for k in (1, 5)}}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new_state, metrics
  return step


def default_predict(model, objective: Objective | None = None, streams=()):
  """`predict(variables, images, key) -> logits`: the model in eval mode,
  fed the RNG `streams` from `key` (none: a deterministic eval)."""
  logits = (objective or Objective.default()).logits

  def predict(variables, images, key):
    rngs = rng_lib.stream_keys(key, streams) if streams else None
    return logits(model.apply(variables, images, train=False, rngs=rngs))
  return predict


def _entropy(log_p):
  return -jnp.sum(jnp.where(log_p > -jnp.inf, jnp.exp(log_p) * log_p, 0.0), axis=-1)


def _mean_softmax(predict, variables, images, key, samples: int):
  """(predictions, expected entropies): the predictions of `predict`
  ({name: logits} or logits); with samples > 1, the log of the softmax
  averaged over `samples` keys fold_in(key, s), and the mean over the
  samples of each one's entropy (None with one sample)."""
  if samples == 1:
    return predict(variables, images, key), None
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(samples))
  log_probs = jax.lax.map(
      lambda k: jax.tree.map(lambda z: jax.nn.log_softmax(z.astype(jnp.float32)),
                             predict(variables, images, k)), keys)
  return (jax.tree.map(lambda lp: jax.nn.logsumexp(lp, axis=0) - jnp.log(samples), log_probs),
          jax.tree.map(lambda lp: jnp.mean(_entropy(lp), axis=0), log_probs))


def eval_step_fn(model, ema: bool = False, *, objective: Objective | None = None,
                 predict: Callable | None = None, samples: int = 1, both: bool = False):
  """The pure eval step: `(state, batch, key) -> {name: metric sums}` (padded
  rows masked), with `key` this batch's key.

  `predict(variables, images, key)` gives logits, or {name: logits} for
  several predictions in one pass (default: `default_predict`, fed the
  model's declared RNG streams when `samples` > 1). With
  `samples` > 1 the softmax is averaged over that many keys (the loss is the
  NLL of the average). The names are "" for `state.params`, "ema" for
  `state.ema_params` (with `ema`; with `both`, the two in one pass);
  predictions named by `predict` are `name` and `ema_name`. Each has loss
  (the NLL), top-1/5 and the calibration sums (`losses.calibration_sums`:
  Brier, entropy, ECE bins; mutual information with `samples` > 1).
  """
  # A Monte-Carlo eval of the model itself feeds it the streams it declares.
  predict = predict or default_predict(
      model, objective, rng_lib.model_streams(model) if samples > 1 else ())
  param_sets = (("", "params"), ("ema", "ema_params")) if both else \
      ((("ema", "ema_params"),) if ema else (("", "params"),))

  def step(state: TrainState, batch, key):
    out = {}
    for prefix, field in param_sets:
      variables = model_variables(getattr(state, field), state.batch_stats)
      preds, expected = _mean_softmax(predict, variables, batch["image"], key, samples)
      if not isinstance(preds, Mapping):
        preds, expected = {"": preds}, (None if expected is None else {"": expected})
      for name, logits in preds.items():
        per_example = losses.cross_entropy(logits, batch["label"])
        full = "_".join(n for n in (prefix, name) if n)
        out[full] = {**losses.metric_sums(logits, batch["label"], per_example, batch["mask"]),
                     **losses.calibration_sums(logits, batch["label"], batch["mask"],
                                               None if expected is None else expected[name])}
    return out
  return step


def jit_train_step(step, mesh, compiler_options=None, rules: parallel.Rules | None = None):
  """Jits a train step with donated state and `data`-sharded batches. The
  state comes and goes laid out as `rules` say (`parallel.state_shardings`;
  None: replicated): the step constrains it, so a state placed that way
  (`Experiment.place`) compiles once. `compiler_options`: XLA's, e.g.
  `fastpath.compiler_options(model)`."""
  rep = parallel.replicated(mesh)

  def laid_out(state, batch):
    shardings = parallel.state_shardings(mesh, state, rules)
    state = jax.lax.with_sharding_constraint(state, shardings)
    state, metrics = step(state, batch)
    return jax.lax.with_sharding_constraint(state, shardings), metrics
  return jax.jit(laid_out, in_shardings=(None, parallel.data_sharded(mesh)),
                 out_shardings=(None, rep), donate_argnums=0, compiler_options=compiler_options)


def lower_train_step(model, tx, mesh, input_shape, batch_size: int, compiler_options=None,
                     rules: parallel.Rules | None = None, **step_kwargs):
  """The jitted train step (`train_step_fn(model, tx, **step_kwargs)`) lowered
  for a float32 global batch of `batch_size` and `create_train_state`'s
  state laid out by `rules`, given only as shapes and shardings: nothing is
  initialised or run. `.compile().as_text()` is the optimized program
  (`parallel.hlo_collectives`); `.compile().memory_analysis()` its memory."""
  data = parallel.data_sharded(mesh)
  state = jax.eval_shape(lambda key: create_train_state(model, tx, key, input_shape),
                         jax.random.PRNGKey(0))
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state,
                       parallel.state_shardings(mesh, state, rules))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32, sharding=data),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data)}
  step = jit_train_step(train_step_fn(model, tx, **step_kwargs), mesh, compiler_options, rules)
  return step.lower(state, batch), state


def jit_eval_step(step, mesh, compiler_options=None):
  """Jits an eval step `(state, batch, key)`; the jitted one takes
  `(state, batch, base_key, batch_index)` and folds the index into the key.
  The state keeps the layout it comes in (replicated or sharded)."""
  rep = parallel.replicated(mesh)
  return jax.jit(lambda state, batch, base, index: step(state, batch,
                                                        jax.random.fold_in(base, index)),
                 in_shardings=(None, parallel.data_sharded(mesh), rep, rep), out_shardings=rep,
                 compiler_options=compiler_options)


def sum_over_batches(eval_step, state, batches, mesh, key=None):
  """The sum over all eval batches of a `jit_eval_step` (batch i gets
  fold_in(key, i); default key: PRNGKey(0)), a pytree of sums; they stay on
  device until the end."""
  key = jax.random.PRNGKey(0) if key is None else key
  totals = None
  for index, batch in enumerate(batches):
    sums = eval_step(state, parallel.shard_batch(batch, mesh), key, jnp.int32(index))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.device_get(totals)


def evaluate(eval_step, state, batches, mesh, key=None) -> dict:
  """Runs a `jit_eval_step` over all eval batches: {name: metric means}
  (the plain model's under "")."""
  return {name: losses.means(sums)
          for name, sums in sum_over_batches(eval_step, state, batches, mesh, key).items()}
