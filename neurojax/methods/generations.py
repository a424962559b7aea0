"""Generational training: DNR, KE, LLF, layer-wise reinit and the long baseline.

    for g in 0 .. num_generations - 1:
        if g > 0:
            keep   <- policy(state, g)          # True = keep (sparsity.policies)
            fresh  <- redraw values with key(seed, g): PyTorch's default layer
                      init, the model's own init or zeros (generations.redraw)
            params <- keep * params + (1 - keep) * fresh
        a fresh optimizer; the lr schedule (warm-up + cosine) restarts
        train num_epochs; evaluate: the generation's test top-1

`generations.policy`: dnr | ke | llf | layerwise | none (the long baseline:
set num_generations=1 and num_epochs to the total).

`generations.redraw="original"` re-draws as the original code does for
each policy: DNR, KE and LLF from PyTorch's default layer init
(kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the DNR
repo's `re_init_weights` and the `split_reinitialize` of its and
fortuitous_forgetting's `layers/conv_type.py`, `linear_type.py`), the
layer-wise reinit from a freshly built model (`train_KE_cls_LW.py` copies
a new `get_model`'s parameters); `torch_default`, `model_init` or `zero`
(evolve_mode="zero") forces one for every policy. LLF re-draws the weights
alone, as `SplitLinear.split_reinitialize` does (`llf_bias=True` re-draws
the biases of the layers it resets too).

Every generation has
`num_epochs`; the step count runs on over generations, so checkpoints,
resume and metrics work as in any run. A reset is a pure function of the
state at the boundary, the seed and the data, so a run killed in any
generation and re-run ends exactly as one that never stopped.

Per generation it records eval top-1, the number of weights reset, the
overlap of the kept set with the previous generation's and the seconds the
mask took (`gen/*` metrics), prints a table and plots them (generations.png).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from neurojax import models, parallel, rng
from neurojax import sparsity as sp
from neurojax.sparsity import policies
from neurojax.train import phases, report
from neurojax.train.experiment import setup
from neurojax.train.state import init_variables
from neurojax.train.writers import metrics_by_step
from neurojax.tree import path_str

POLICIES = ("dnr", "ke", "llf", "layerwise", "none")
REDRAWS = ("original",) + policies.REDRAWS
# What `redraw="original"` means for each policy (module docstring).
ORIGINAL_REDRAW = {"dnr": "torch_default", "ke": "torch_default", "llf": "torch_default",
                   "layerwise": "model_init", "none": "model_init"}


def config() -> ml_collections.ConfigDict:
  """`config.generations`: method="generations" (DNR, KE, LLF, layer-wise
  reinit, the long baseline). DNR's SNIP batches: `config.sparsity.snip_batches`."""
  return ml_collections.ConfigDict(dict(
      policy="dnr",                 # dnr | ke | llf | layerwise | none
      num_generations=3,            # each of num_epochs, with a fresh optimizer and schedule
      reset=0.2,                    # dnr: re-draw this fraction of the eligible weights, the
                                    # least salient (SNIP); 0.2 keeps the 80% most salient
      split_rate=0.5,               # ke: the fraction of channels kept (the paper's "split rate")
      reset_layer="layer4",         # llf: re-draw from this stage on
      llf_bias=False,               # llf: re-draw the biases of those layers too (the
                                    # original keeps them: it re-draws the weights alone)
      redraw="original"))           # what reset entries become: original (the policy's
                                    # original: torch_default for dnr/ke/llf, model_init for
                                    # layerwise) | torch_default | model_init | zero


def redraw_kind(g) -> str:
  """The re-draw `config.generations` asks for, "original" resolved."""
  return ORIGINAL_REDRAW[g.policy] if g.redraw == "original" else g.redraw


def validate(config) -> None:
  from neurojax import config as config_lib  # pylint: disable=g-import-not-at-top
  g = config.generations
  if g.policy not in POLICIES:
    raise ValueError(f"config.generations.policy={g.policy!r} is not valid; choose one of: "
                     f"{', '.join(POLICIES)}")
  if g.redraw not in REDRAWS:
    raise ValueError(f"config.generations.redraw={g.redraw!r} is not valid; choose one of: "
                     f"{', '.join(REDRAWS)}")
  if g.num_generations < 1:
    raise ValueError(f"config.generations.num_generations={g.num_generations} must be >= 1")
  config_lib.check_number(config, "generations.reset", 0, 1, high_open=True,
                          hint=": the fraction of the eligible weights DNR re-draws (0.2 re-draws "
                               "the 20% least salient)")
  if not 0.0 < g.split_rate <= 1.0:
    raise ValueError(f"config.generations.split_rate={g.split_rate} must be in (0, 1]: the "
                     "fraction of channels KE keeps (the paper's split rate, e.g. 0.5)")
  if g.policy == "dnr":
    config_lib.validate_sparsity(config)
  if g.policy in ("ke", "llf", "layerwise"):
    try:
      stages = models.stages(config.model.name)
    except ValueError as e:
      raise ValueError(f"config.generations.policy={g.policy!r} resets by depth, so it needs "
                       f"the model's stages: {e}") from None
    if g.policy == "llf":
      try:
        policies.llf({}, g.reset_layer, stages)      # checks the name
      except ValueError as e:
        raise ValueError(f"config.generations.{e}") from None


def _keep_mask(config, exp, state, generation: int, step: int):
  g = config.generations
  params = state.params
  if g.policy == "dnr":
    n = sp.snip_batch_count(config.sparsity.snip_batches, exp.steps_per_epoch)
    batches = [parallel.shard_batch(exp.data.train.batch(step + i), exp.mesh) for i in range(n)]
    return policies.dnr(sp.ce_grad_fn(exp.model, state.batch_stats), params, batches,
                        keep=1.0 - g.reset)
  stages = models.stages(config.model.name)
  if g.policy == "ke":
    return policies.ke(params, g.split_rate, stages)
  if g.policy == "llf":
    return policies.llf(params, g.reset_layer, stages, biases=g.llf_bias)
  return policies.layerwise(params, generation, g.num_generations, stages)


def _by_path(keep) -> dict:
  """{path: bool array} of the masked leaves."""
  return {path_str(p): np.asarray(m) for p, m in jax.tree_util.tree_flatten_with_path(keep)[0]}


def _counts(keep: dict, previous: dict | None):
  """(entries reset, and the fraction of the kept entries that the previous
  generation kept too, over the leaves both masks cover; None where there is
  nothing to compare: no previous mask, or nothing kept, as LLF's mask of
  the layers it re-draws whole)."""
  reset = sum(int(m.size - m.sum()) for m in keep.values())
  if not previous:
    return reset, None
  common = [p for p in keep if p in previous]
  kept = sum(int(keep[p].sum()) for p in common)
  both = sum(int((keep[p] & previous[p]).sum()) for p in common)
  return reset, (both / kept if kept else None)


def _mask_path(workdir, generation):
  return os.path.join(workdir, "masks", f"generation_{generation}.npz")


def _save_mask(workdir, generation, keep: dict):
  if not parallel.is_main_process():
    return
  os.makedirs(os.path.join(workdir, "masks"), exist_ok=True)
  np.savez_compressed(_mask_path(workdir, generation),
                      **{p.replace("/", "|"): np.packbits(m) for p, m in keep.items()},
                      __shapes__=json.dumps({p: m.shape for p, m in keep.items()}))


def load_mask(workdir: str, generation: int) -> dict | None:
  """The keep-mask applied at the start of `generation`, {path: bool array}."""
  path = _mask_path(workdir, generation)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    shapes = json.loads(str(f["__shapes__"]))
    return {p: np.unpackbits(f[p.replace("/", "|")], count=math.prod(s)).reshape(s).astype(bool)
            for p, s in shapes.items()}


def generation_keys(seed: int, num_generations: int):
  """The init key of each generation's re-drawn weights: distinct, a function of
  the seed, and of the generation's index only (not of the run's length)."""
  base = rng.purpose_key(seed, rng.GENERATIONS)
  return jax.vmap(lambda g: jax.random.fold_in(base, g))(jnp.arange(num_generations))


def start_generation(state, keep, fresh_params):
  """The params at a generation boundary: the weights `keep` drops are
  re-drawn from `fresh_params` (the kept ones stay bit-identical; `keep=None`
  resets nothing). The phase loop then starts a fresh optimizer state, so
  momentum is zero and the lr schedule starts again."""
  params = state.params if keep is None else sp.regenerate(state.params, keep, fresh_params)
  return state.replace(params=params)


def _record(exp, workdir, generation, step, keep, seconds) -> None:
  """Writes gen/reset, gen/overlap and gen/mask_seconds (the wall-clock of
  computing the mask, SNIP's forward/backward passes for DNR), and saves the
  mask for the next overlap."""
  flat = _by_path(parallel.to_host(keep))
  reset, overlap = _counts(flat, load_mask(workdir, generation - 1))
  _save_mask(workdir, generation, flat)
  record = {"generation": generation, "reset": reset, "mask_seconds": seconds}
  if overlap is not None:
    record["overlap"] = overlap
  exp.writer.write(step, record, prefix="gen/")
  logging.info("generation %d: %d weights reset, overlap %s", generation, reset, overlap)


def run(config, workdir: str) -> dict:
  validate(config)
  g = config.generations
  exp = setup(config, workdir)
  gen_steps = exp.num_steps
  kind = redraw_kind(g)
  fresh = jax.jit(lambda key: policies.redraw_values(
      kind, init_variables(exp.model, key, exp.data.info.image_shape)[0], key),
      out_shardings=parallel.replicated(exp.mesh))
  keys = generation_keys(config.seed, g.num_generations)

  def regenerate(generation):
    def enter(exp, state):
      keep = None
      if g.policy != "none":
        began = time.perf_counter()
        keep = jax.block_until_ready(_keep_mask(config, exp, state, generation, int(state.step)))
        _record(exp, workdir, generation, int(state.step), keep, time.perf_counter() - began)
      return start_generation(state, keep, None if keep is None else fresh(keys[generation]))
    return enter

  plan = [phases.Phase("generation 0", gen_steps)] + [
      phases.Phase(f"generation {i}", gen_steps, enter=regenerate(i), fresh_optimizer=True)
      for i in range(1, g.num_generations)]
  phases.run(exp, plan, desc="generations")
  return _report(config, exp, workdir, gen_steps)


def _report(config, exp, workdir, gen_steps) -> dict:
  if not exp.writer.active:
    return {}
  by_step = metrics_by_step(workdir)
  rows = []
  for generation in range(config.generations.num_generations):
    start, end = generation * gen_steps, (generation + 1) * gen_steps
    rows.append({"generation": generation, "top1": by_step.get(end, {}).get("eval/top1"),
                 "top5": by_step.get(end, {}).get("eval/top5"),
                 "reset": int(by_step.get(start, {}).get("gen/reset", 0)),
                 "overlap": by_step.get(start, {}).get("gen/overlap"),
                 "mask_seconds": by_step.get(start, {}).get("gen/mask_seconds")})
  # One epoch's wall-clock, from the median training throughput.
  speeds = [r["train/images_per_sec"] for r in by_step.values() if "train/images_per_sec" in r]
  epoch_seconds = (exp.steps_per_epoch * config.batch_size / float(np.median(speeds))
                   if speeds else None)
  redraw = None if config.generations.policy == "none" else redraw_kind(config.generations)
  results = {"policy": config.generations.policy, "model": config.model.name,
             "redraw": redraw,
             "epochs_per_generation": gen_steps / exp.steps_per_epoch,
             "epoch_seconds": epoch_seconds, "generations": rows, "final_top1": rows[-1]["top1"]}
  masks = [r["mask_seconds"] for r in rows if r["mask_seconds"] is not None]
  lines = []
  if masks and epoch_seconds:
    lines.append(f"computing a mask takes {np.median(masks):.2f} s (median), one epoch "
                 f"{epoch_seconds:.1f} s: {np.median(masks) / epoch_seconds:.3f} epochs")
  from neurojax.plots import plot_generations  # pylint: disable=g-import-not-at-top
  return report.write(
      workdir, "generations", results,
      title=(f"{config.model.name}: {config.generations.policy}, "
             f"{config.generations.num_generations} generations, "
             + (f"re-drawn from {redraw}, " if redraw else "") + f"workdir {workdir}"),
      rows=rows, columns=["generation", "top1", "top5", "reset", "overlap", "mask_seconds"],
      lines=lines,
      plot=lambda: plot_generations(rows, os.path.join(workdir, "generations.png"),
                                    title=f"{config.model.name} {config.generations.policy}"))
