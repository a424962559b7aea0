"""Evaluate a run without training: `python -m neurojax.main --mode=eval`.

    python -m neurojax.main --config=configs/X.py --workdir=DIR --mode=eval \
        [--config.data.eval_split=validation] [--eval_out=FILE.json]

The weights are DIR's newest checkpoint (a finished or an interrupted run;
read-only: the checkpoints are neither changed nor quarantined), or, when
DIR holds none, those of `config.init_from` (another workdir or a converted
torchvision checkpoint, with the model of `config.model`). The data, the
split (`config.data.eval_split`, any split: `train` too) and the eval batch
come from --config. The metrics of `config.method`'s own eval (a Bayesian
run's Monte-Carlo average over `bayes.eval_samples`) over every example of
the split: NLL, top-1/5, ECE (15 bins), Brier, predictive entropy (mutual
information for a Monte-Carlo eval), with the EMA weights' beside them when
the run kept an EMA, and the reliability bins. They are printed and written
as JSON to --eval_out, by default `DIR/eval/<split>-step<N>.json`.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax

from neurojax import losses, methods, models, parallel, rng as rng_lib
from neurojax.nn import fastpath
from neurojax.train import checkpoint as ckpt_lib
from neurojax.train import init_from as init_from_lib
from neurojax.train import steps as steps_lib
from neurojax.train.experiment import config_model_spec, load_run
from neurojax.train.state import create_train_state


def _weights(config, workdir: str, data_info):
  """(config of the weights' run, model, state, step, source description)."""
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = []
  if os.path.isdir(checkpoints):
    checkpointer = ckpt_lib.Checkpointer(checkpoints, async_save=False, read_only=True)
    steps = checkpointer.all_steps()
    checkpointer.close()
  if steps or not config.get("init_from"):
    saved, model, state = load_run(workdir)       # says why when DIR has no checkpoint
    return saved, model, state, int(steps[-1]), workdir
  source = config.init_from
  model = models.build(config_model_spec(config, data_info.num_classes))
  state = create_train_state(model, optax.identity(), rng_lib.seed_key(config.seed),
                             data_info.image_shape)
  state = init_from_lib.apply(state, init_from_lib.load_variables(source), source,
                              config.get("init_from_exclude", ""))
  return config, model, state, 0, f"config.init_from={source}"


def run(config, workdir: str, out: str | None = None) -> dict:
  """Evaluates (see the module docstring); returns what it writes."""
  from neurojax.config import validate  # pylint: disable=g-import-not-at-top
  from neurojax.data import build_data  # pylint: disable=g-import-not-at-top
  from neurojax.methods.supervised import reliability_bins  # pylint: disable=g-import-not-at-top
  validate(config)
  data = build_data(config)
  saved, model, state, step, source = _weights(config, workdir, data.info)
  outputs = jax.eval_shape(lambda: model.apply(
      steps_lib.model_variables(state.params, state.batch_stats),
      np.zeros((1, *data.info.image_shape), np.float32), train=False))
  logits = outputs["logits"] if isinstance(outputs, dict) else outputs
  if logits.shape[-1] < data.info.num_classes:
    raise ckpt_lib.CheckpointError(
        f"{source}: the model predicts {logits.shape[-1]} classes but "
        f"{config.data.name!r} has {data.info.num_classes}; evaluate it on its own dataset")
  options = getattr(methods.module(saved.method), "eval_options", None)
  options = options(saved, model, data.info.num_train) if options else {}
  mesh = parallel.make_mesh()
  eval_step = steps_lib.jit_eval_step(
      steps_lib.eval_step_fn(model, both=state.ema_params is not None, **options), mesh,
      fastpath.compiler_options(model))
  totals = steps_lib.sum_over_batches(eval_step, parallel.place(state, mesh, None),
                                      data.eval.batches(), mesh,
                                      rng_lib.purpose_key(saved.seed, rng_lib.EVAL))
  totals = jax.device_get(totals)
  metrics = {(f"{name}_{k}" if name else k): float(v) for name, sums in totals.items()
             for k, v in losses.means(sums).items()}
  split = config.data.eval_split
  result = {"source": source, "step": step, "method": saved.method, "model": saved.model.name,
            "dataset": ("synthetic" if config.data.source == "synthetic"
                        else f"{config.data.source}:{config.data.name}"), "split": split,
            "num_examples": data.info.num_eval, "metrics": metrics,
            "reliability": reliability_bins(totals.get(""))}
  if out is None:
    out = os.path.join(workdir, "eval", f"{split.replace('/', '_')}-step{step}.json")
  if parallel.is_main_process():
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
      json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    print(f"{source} (step {step}) on {result['dataset']} {split} ({data.info.num_eval} "
          f"examples): top-1 {100 * metrics['top1']:.2f}%, NLL {metrics['loss']:.4f}, "
          f"ECE {metrics['ece']:.4f}, Brier {metrics['brier']:.4f}\nwrote {out}")
  return result
