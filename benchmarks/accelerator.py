"""One accelerator benchmark: neurojax's training steps on whatever devices JAX finds.

Runs on GPU, TPU or CPU (all local devices, data-parallel: the global batch
is the per-device batch x the device count) and writes one JSON. Four
benchmarks (`--only NAME[,NAME]` runs a subset):

  resnet     ResNet-50 training throughput in bf16 on synthetic data: the
             registry model (`models.get_model("resnet50", num_classes=1000,
             dtype="bfloat16")`, 224 px) with the train step built as
             neurojax.main builds it (`create_train_state` with replicated,
             donated state, `steps.jit_train_step(steps.train_step_fn(...))`,
             `make_optimizer`: SGD, momentum 0.9, weight decay 1e-4; label
             smoothing 0.1; batches sharded on the mesh's `data` axis).
             Reports images/s, the step time, the first step's backend
             compile seconds and, where `compiled.cost_analysis()` gives
             flops, the achieved TFLOP/s.
  khead      The Kakuritsu K head (`nn.GatedHead` with Gate("kakuritsu", 0.5):
             exact per-sample synapse gates) against the plain dense head of
             the same shape (Gate("none")), on ResNet-152's 2048-d pooled
             features: 2048 -> 1000 -> 1000 (the original's heads), float32
             as the method's configs run it. Times the jitted forward +
             backward (the loss and the params' gradients) of each.
  quadratic  The Dit quadratic term: the train step of
             configs/dit_resnet20_cifar10.py's model against
             configs/resnet20_cifar10.py's (the configs' optimizer, lr groups,
             label smoothing and dtype), 32 px, batch 128 per device.
  mask       The masked (pruning) step: the `resnet` model's step with
             global-magnitude masks at 8% density in the state (so the
             optimizer, `sparsity.masked`, zeroes the pruned gradients,
             moments and updates) against the same step without masks.

How it is timed: the device batch is made once on the devices and reused
(the step alone, no input pipeline); every arm takes one first step (its
compile), untimed warm-up steps, then timed blocks of `--steps` steps, each
ended by `jax.block_until_ready`; the figures are medians over the blocks.
The arms of a comparison run interleaved, the order alternating each round,
and their ratio is the median of the per-round (paired) ratios.

XLA backend compilations are counted with a
`jax.monitoring.register_event_duration_secs_listener` on
`jax._src.dispatch.BACKEND_COMPILE_EVENT` (as benchmarks/throughput.py
does); after each arm's first step there must be none. The script still
writes the JSON, then exits 1 if any happened. With a persistent
compilation cache (JAX_COMPILATION_CACHE_DIR; the tests set one) a cached
executable is loaded, not compiled, so the compile seconds can read 0.

`--tiny` shrinks everything so that it runs on a CPU in seconds (a smoke
test of the script, not a measurement): 2 images per device, 1 warm-up and
2 timed steps per arm, and smaller models, because on a CPU the XLA compile
(above all of the random inits) is what takes the time:
  resnet     `models.resnet.ResNet(layers=(1,), bottleneck=True, width=8,
             stem="small")` (one ResNet-50 bottleneck block, with its 1x1
             downsample conv) at 16 px, 10 classes, bf16, instead of ResNet-50;
  khead      64 -> 32 -> 10;
  quadratic  the two configs' CifarResNet at depth 8 (one block per stage,
             the Dit block included), width 4, 16 px;
  mask       on the tiny `resnet` model.

Usage:
  .venv/bin/python benchmarks/accelerator.py                  # full size (~10 min on one GPU)
  .venv/bin/python benchmarks/accelerator.py --tiny           # CPU smoke test (seconds)
  .venv/bin/python benchmarks/accelerator.py --only resnet,mask --batch-per-device 128
  .venv/bin/python benchmarks/accelerator.py --out /tmp/a.json
Writes benchmarks/out/accelerator.json (`--out` to change) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax._src import dispatch

# Run from a checkout without `pip install -e .`: import neurojax from the repo root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from neurojax import models, parallel, sparsity as sp  # noqa: E402
from neurojax.config import base_config, load_config_file  # noqa: E402
from neurojax.models.resnet import ResNet  # noqa: E402
from neurojax.models.resnet_cifar import CifarResNet  # noqa: E402
from neurojax.nn import Gate, GatedHead  # noqa: E402
from neurojax.train import experiment, steps  # noqa: E402
from neurojax.train.optimizers import make_optimizer  # noqa: E402
from neurojax.train.schedules import make_schedule  # noqa: E402
from neurojax.train.state import create_train_state, init_variables  # noqa: E402

BENCHMARKS = ("resnet", "khead", "quadratic", "mask")
OUT = Path(__file__).resolve().parent / "out" / "accelerator.json"
CONFIGS = _ROOT / "configs"
STEPS_PER_EPOCH = 390          # only shapes the configs' lr schedules; no effect on the compute


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything `--tiny` changes."""
  resnet_model: str            # a registry name, or "tiny" (see the docstring)
  image: int
  classes: int
  batch_per_device: int
  head_batch_per_device: int
  head_features: int
  head_hidden: int
  head_classes: int
  quadratic_configs: tuple[str, str]      # (with the quadratic term, without)
  quadratic_image: int
  quadratic_batch_per_device: int
  quadratic_depth: int                    # 0: the configs' own models (depth 20)
  quadratic_width: int                    # 0: the configs' width
  warmup: int
  steps: int                   # steps per timed block
  rounds: int                  # timed blocks (per arm)


FULL = Sizes(resnet_model="resnet50", image=224, classes=1000, batch_per_device=256,
             head_batch_per_device=128, head_features=2048, head_hidden=1000, head_classes=1000,
             quadratic_configs=("dit_resnet20_cifar10", "resnet20_cifar10"), quadratic_image=32,
             quadratic_batch_per_device=128, quadratic_depth=0, quadratic_width=0,
             warmup=5, steps=10, rounds=5)
TINY = Sizes(resnet_model="tiny", image=16, classes=10, batch_per_device=2,
             head_batch_per_device=2, head_features=64, head_hidden=32, head_classes=10,
             quadratic_configs=FULL.quadratic_configs, quadratic_image=16,
             quadratic_batch_per_device=2, quadratic_depth=8, quadratic_width=4,
             warmup=1, steps=1, rounds=2)


# --------------------------------------------------------------------------
# Compile counting.

class CompileCounter:
  """Counts XLA backend compilations and their seconds (jax.monitoring events)."""

  def __init__(self):
    self.count = 0
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event: str, duration_secs: float, **kwargs) -> None:
    if event == dispatch.BACKEND_COMPILE_EVENT:
      self.count += 1
      self.seconds += duration_secs


_COUNTER: CompileCounter | None = None


def compile_counter() -> CompileCounter:
  """One listener per process (jax.monitoring listeners cannot be removed
  one by one), shared by repeated `main()` calls."""
  global _COUNTER
  if _COUNTER is None:
    _COUNTER = CompileCounter()
  return _COUNTER


# --------------------------------------------------------------------------
# Timing.

def time_arms(arms: dict[str, Callable[[int], Any]], warmup: int, steps_per_block: int,
              rounds: int, counter: CompileCounter) -> dict:
  """Times `arms` (name -> run(n): n steps, blocked until ready).

  Each arm's first step is timed on its own (its compile); then every arm
  takes `warmup` untimed steps; then `rounds` rounds of one block of
  `steps_per_block` steps per arm, the order reversed every other round.
  Returns per-arm first-step figures, the seconds per step of every block
  and the backend compiles after the first steps.
  """
  first = {}
  for name, run in arms.items():
    c0, s0, t0 = counter.count, counter.seconds, time.perf_counter()
    run(1)
    first[name] = {"first_step_s": time.perf_counter() - t0,
                   "compile_s": counter.seconds - s0, "compiles_first_step": counter.count - c0}
  after = counter.count
  if warmup:
    for run in arms.values():
      run(warmup)
  names = list(arms)
  blocks = {name: [] for name in names}
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      t0 = time.perf_counter()
      arms[name](steps_per_block)
      blocks[name].append((time.perf_counter() - t0) / steps_per_block)
  return {"first": first, "step_s": blocks, "compiles_after_first_step": counter.count - after}


def paired_ratio(a: list[float], b: list[float]) -> float:
  """The median of the per-round ratios a/b."""
  return statistics.median(x / y for x, y in zip(a, b))


def train_arm(step, state, batch):
  """run(n) for a jitted train step, and a box holding the live state (the
  step donates it) and the last metrics."""
  box = {"state": state, "metrics": None}

  def run(n: int):
    s, m = box["state"], None
    for _ in range(n):
      s, m = step(s, batch)
    jax.block_until_ready((s, m))
    box["state"], box["metrics"] = s, m
    return m
  return run, box


# --------------------------------------------------------------------------
# Building: data, models and steps, as the library builds them.

def synthetic_batch(mesh, rng: np.random.Generator, global_batch: int, shape,
                    classes: int) -> dict:
  """A host batch put on the mesh with `parallel.shard_batch`, as the
  training loop feeds it: float32 images uniform in [0, 1) (scaled pixels)
  and int32 labels. Made once and reused, so the timing is the step alone."""
  return parallel.shard_batch(
      {"image": rng.random((global_batch, *shape), dtype=np.float32),
       "label": rng.integers(0, classes, global_batch).astype(np.int32)}, mesh)


@dataclasses.dataclass
class Trainer:
  """A model's jitted train step, its live state and a device batch."""
  name: str
  model: Any
  step: Any
  run: Callable[[int], Any]
  box: dict
  batch: dict
  params: int
  dtype: str


def build_trainer(name: str, config, model, shape, classes: int, global_batch: int, mesh,
                  seed: int) -> Trainer:
  """The train step of `config` for `model`, as `experiment` builds it:
  `make_schedule` + `make_optimizer(config.optimizer, ...)` on the abstract
  params (`build_model_and_optimizer`), `create_train_state` replicated on
  the mesh, and `jit_train_step(train_step_fn(...))` with the config's label
  smoothing, mix and EMA (`Experiment.train_step`)."""
  schedule = make_schedule(config.schedule, STEPS_PER_EPOCH,
                           experiment.total_steps(config, STEPS_PER_EPOCH))
  abstract = jax.eval_shape(lambda k: init_variables(model, k, shape)[0], jax.random.PRNGKey(0))
  tx = make_optimizer(config.optimizer, schedule, abstract)
  state = create_train_state(model, tx, jax.random.PRNGKey(seed), shape,
                             parallel.replicated(mesh), ema=bool(config.get("ema_decay", 0.0)))
  step = steps.jit_train_step(
      steps.train_step_fn(model, tx, label_smoothing=config.label_smoothing, mix=config.mix,
                          ema_decay=config.ema_decay), mesh)
  batch = synthetic_batch(mesh, np.random.default_rng(seed), global_batch, shape, classes)
  run, box = train_arm(step, state, batch)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  return Trainer(name, model, step, run, box, batch, n_params, config.compute_dtype)


def resnet_config(model: str = "resnet50"):
  """The `resnet` benchmark's training config: base_config(model) with SGD,
  momentum 0.9, weight decay 1e-4, label smoothing 0.1, bf16 compute."""
  c = base_config(model)
  c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay = "sgd", 0.9, 1e-4
  c.label_smoothing = 0.1
  c.compute_dtype = "bfloat16"
  return c


def resnet_trainer(sizes: Sizes, mesh, seed: int, cache: dict) -> Trainer:
  """The `resnet` benchmark's trainer, built once per run (`mask` reuses it)."""
  if "resnet" not in cache:
    tiny = sizes.resnet_model == "tiny"
    c = resnet_config("resnet50" if tiny else sizes.resnet_model)
    if tiny:
      model = ResNet(layers=(1,), bottleneck=True, width=8, stem="small",
                     num_classes=sizes.classes, dtype=models.DTYPES[c.compute_dtype])
      name = "tiny ResNet (1 bottleneck block, width 8)"
    else:
      model = models.build(experiment.config_model_spec(c, sizes.classes))
      name = sizes.resnet_model
    cache["resnet"] = build_trainer(name, c, model, (sizes.image, sizes.image, 3), sizes.classes,
                                    sizes.batch_per_device * mesh.devices.size, mesh, seed)
  return cache["resnet"]


def xla_flops(step, state, batch) -> float | None:
  """The flops of the compiled step (XLA's cost analysis; None where the
  backend gives none). The step is already compiled, so this reuses it."""
  try:
    analysis = step.lower(state, batch).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except   (backends without cost analysis)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


# --------------------------------------------------------------------------
# The benchmarks. Each returns its JSON entry.

def bench_resnet(sizes: Sizes, mesh, seed: int, counter: CompileCounter, cache: dict) -> dict:
  n_dev = mesh.devices.size
  tr = resnet_trainer(sizes, mesh, seed, cache)
  timed = time_arms({"resnet": tr.run}, sizes.warmup, sizes.steps, sizes.rounds, counter)
  step_s = statistics.median(timed["step_s"]["resnet"])
  loss = float(tr.box["metrics"]["loss"])
  c0 = counter.count
  flops = xla_flops(tr.step, tr.box["state"], tr.batch)   # after the count: a recompile would not hide
  global_batch = sizes.batch_per_device * n_dev
  out = {
      "model": tr.name, "params": tr.params, "dtype": tr.dtype, "image": sizes.image,
      "classes": sizes.classes, "batch_per_device": sizes.batch_per_device,
      "global_batch": global_batch, "devices": n_dev,
      "images_per_s": global_batch / step_s, "images_per_s_per_device": global_batch / step_s / n_dev,
      "step_ms": 1e3 * step_s, "step_ms_blocks": [1e3 * t for t in timed["step_s"]["resnet"]],
      **timed["first"]["resnet"],
      "compiles_after_first_step": timed["compiles_after_first_step"],
      "final_loss": loss,
      "xla_flops_per_step": flops,
      "cost_analysis_compiles": counter.count - c0,
  }
  # XLA's cost analysis is of the compiled (per-device, SPMD-partitioned)
  # program: every device runs it once per step.
  out["achieved_tflops_per_s"] = None if flops is None else flops * n_dev / step_s / 1e12
  out["achieved_tflops_per_s_per_device"] = None if flops is None else flops / step_s / 1e12
  return out


def bench_khead(sizes: Sizes, mesh, seed: int, counter: CompileCounter, cache: dict) -> dict:
  del cache
  n_dev = mesh.devices.size
  global_batch = sizes.head_batch_per_device * n_dev
  rep, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  rng = np.random.default_rng(seed)
  features = parallel.shard_batch(
      {"x": rng.standard_normal((global_batch, sizes.head_features), dtype=np.float32),
       "y": rng.integers(0, sizes.head_classes, global_batch).astype(np.int32)}, mesh)
  x, y = features["x"], features["y"]
  heads = {"K": (Gate("kakuritsu", 0.5), "kakuritsu", "xla"),
           "dense": (Gate("none"), "torch", "xla")}
  if mesh.devices.flat[0].platform != "cpu":     # on CPU the kernel only runs interpreted
    heads["K_pallas"] = (Gate("kakuritsu", 0.5), "kakuritsu", "pallas")
  arms, errors = {}, {}
  for name, (gate, init, impl) in heads.items():
    head = GatedHead(hidden=sizes.head_hidden, num_classes=sizes.head_classes, weight_init=init,
                     impl=impl)
    params = jax.jit(lambda k, head=head: head.init(k, jnp.zeros((1, sizes.head_features))),
                     out_shardings=rep)(jax.random.PRNGKey(seed))["params"]

    def fwd_bwd(params, x, y, key, i, head=head, gate=gate):
      k = jax.random.fold_in(key, i)

      def loss(p):
        logits = head.apply({"params": p}, x, gate, rngs={"gate": k, "dropout": k})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return jax.value_and_grad(loss)(params)

    fb = jax.jit(fwd_bwd, in_shardings=(rep, data, data, rep, rep), out_shardings=rep)
    key = jax.device_put(jax.random.PRNGKey(seed + 2), rep)
    calls = [0]

    def run(n, fb=fb, params=params, key=key, calls=calls):
      for _ in range(n):
        out = fb(params, x, y, key, calls[0])   # a new gate draw each call
        calls[0] += 1
      jax.block_until_ready(out)
      return out
    if impl == "pallas":               # never run on an accelerator before: keep the others
      try:
        run(1)
      except Exception as e:  # pylint: disable=broad-except
        errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        continue
    arms[name] = run
  timed = time_arms(arms, sizes.warmup, sizes.steps, sizes.rounds, counter)
  t = timed["step_s"]
  return {
      "what": "jitted forward + backward (loss and param gradients) of the head alone",
      "shape": f"{sizes.head_features} -> {sizes.head_hidden} -> {sizes.head_classes}",
      "dtype": "float32", "p": 0.5, "batch_per_device": sizes.head_batch_per_device,
      "global_batch": global_batch, "devices": n_dev,
      "k_ms": 1e3 * statistics.median(t["K"]), "dense_ms": 1e3 * statistics.median(t["dense"]),
      "ratio_k_over_dense": paired_ratio(t["K"], t["dense"]),
      **({"k_pallas_ms": 1e3 * statistics.median(t["K_pallas"]),
          "ratio_k_pallas_over_k_xla": paired_ratio(t["K_pallas"], t["K"])}
         if "K_pallas" in t else {}),
      "errors": errors,
      "k_ms_blocks": [1e3 * v for v in t["K"]], "dense_ms_blocks": [1e3 * v for v in t["dense"]],
      "first": timed["first"], "compile_s": sum(f["compile_s"] for f in timed["first"].values()),
      "compiles_after_first_step": timed["compiles_after_first_step"],
  }


def bench_quadratic(sizes: Sizes, mesh, seed: int, counter: CompileCounter, cache: dict) -> dict:
  del cache
  n_dev = mesh.devices.size
  shape = (sizes.quadratic_image, sizes.quadratic_image, 3)
  trainers = {}
  for arm, config_name in zip(("with", "without"), sizes.quadratic_configs):
    c = load_config_file(str(CONFIGS / f"{config_name}.py"))
    if sizes.quadratic_depth:
      options = {k: v for k, v in c.model.items() if k not in ("name", "width")}
      model = CifarResNet(depth=sizes.quadratic_depth, num_classes=10,
                          width=sizes.quadratic_width or c.model.width,
                          dtype=models.DTYPES[c.compute_dtype],
                          dit=c.model.name.startswith("dit_"), **options)
      label = f"{c.model.name} at depth {sizes.quadratic_depth}"
    else:
      model = models.build(experiment.config_model_spec(c, 10))
      label = c.model.name
    trainers[arm] = build_trainer(f"{label} ({config_name})", c, model, shape, 10,
                                  sizes.quadratic_batch_per_device * n_dev, mesh, seed)
  timed = time_arms({k: t.run for k, t in trainers.items()}, sizes.warmup, sizes.steps,
                    sizes.rounds, counter)
  t = timed["step_s"]
  return {
      "models": {k: v.name for k, v in trainers.items()},
      "params": {k: v.params for k, v in trainers.items()},
      "dtype": trainers["with"].dtype, "image": sizes.quadratic_image,
      "batch_per_device": sizes.quadratic_batch_per_device,
      "global_batch": sizes.quadratic_batch_per_device * n_dev, "devices": n_dev,
      "with_ms": 1e3 * statistics.median(t["with"]), "without_ms": 1e3 * statistics.median(t["without"]),
      "ratio_with_over_without": paired_ratio(t["with"], t["without"]),
      "with_ms_blocks": [1e3 * v for v in t["with"]],
      "without_ms_blocks": [1e3 * v for v in t["without"]],
      "final_loss": {k: float(v.box["metrics"]["loss"]) for k, v in trainers.items()},
      "first": timed["first"], "compile_s": sum(f["compile_s"] for f in timed["first"].values()),
      "compiles_after_first_step": timed["compiles_after_first_step"],
  }


def bench_mask(sizes: Sizes, mesh, seed: int, counter: CompileCounter, cache: dict,
               density: float) -> dict:
  tr = resnet_trainer(sizes, mesh, seed, cache)
  dense = tr.box["state"]

  def with_masks(state):
    """Global-magnitude masks at `density`, the params pruned; every leaf a
    fresh copy (the step donates its state: the two must not share buffers)."""
    masks = sp.global_topk(sp.magnitude(state.params, sp.dense_masks(state.params)), density)
    return jax.tree.map(jnp.copy, state.replace(params=sp.apply(state.params, masks),
                                                masks=masks))
  masked = jax.jit(with_masks, out_shardings=parallel.replicated(mesh))(dense)
  masked_run, masked_box = train_arm(tr.step, masked, tr.batch)
  timed = time_arms({"masked": masked_run, "plain": tr.run}, sizes.warmup, sizes.steps,
                    sizes.rounds, counter)
  t = timed["step_s"]
  # Host-side checks (numpy, no compiles): the pruned weights stayed exactly 0.
  params, masks = masked_box["state"].params, masked_box["state"].masks
  pruned = [np.asarray(w)[~np.asarray(m)] for m, w in zip(
      jax.tree.leaves(masks), jax.tree.leaves(sp.map_masked(lambda _, w: w, masks, params)))]
  kept = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
  total = sum(int(np.asarray(m).size) for m in jax.tree.leaves(masks))
  return {
      "model": tr.name, "dtype": tr.dtype, "density": density, "kept_weights": kept,
      "maskable_weights": total, "batch_per_device": sizes.batch_per_device,
      "global_batch": sizes.batch_per_device * mesh.devices.size, "devices": mesh.devices.size,
      "masked_ms": 1e3 * statistics.median(t["masked"]), "plain_ms": 1e3 * statistics.median(t["plain"]),
      "ratio_masked_over_plain": paired_ratio(t["masked"], t["plain"]),
      "masked_ms_blocks": [1e3 * v for v in t["masked"]],
      "plain_ms_blocks": [1e3 * v for v in t["plain"]],
      "pruned_weights_still_zero": bool(all(np.all(p == 0) for p in pruned)),
      "final_loss": {"masked": float(masked_box["metrics"]["loss"]),
                     "plain": float(tr.box["metrics"]["loss"])},
      "first": timed["first"], "compile_s": sum(f["compile_s"] for f in timed["first"].values()),
      "compiles_after_first_step": timed["compiles_after_first_step"],
  }


# --------------------------------------------------------------------------
# Report.

def environment(mesh) -> dict:
  devices = list(mesh.devices.flat)
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    jaxlib_version = jaxlib.__version__
  except Exception:  # pylint: disable=broad-except
    jaxlib_version = None
  return {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(), "platform": platform.platform(),
      "jax": jax.__version__, "jaxlib": jaxlib_version,
      "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                  "kinds": sorted({d.device_kind for d in devices}), "count": len(devices),
                  "process_count": jax.process_count(), "list": [str(d) for d in devices]},
      "default_backend": jax.default_backend(),
      "os_cpu_count": os.cpu_count(),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
      "persistent_compilation_cache": jax.config.jax_compilation_cache_dir or None,
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def peak_memory(mesh) -> int | None:
  """The largest peak bytes in use over the devices, where the backend reports it."""
  peaks = []
  for d in mesh.devices.flat:
    try:
      stats = d.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def table(results: dict) -> str:
  lines = ["| benchmark | setting | result | first-step compile s | compiles after 1st step |",
           "|---|---|---|---:|---:|"]
  for name, r in results.items():
    batch = f"batch {r['batch_per_device']}/device x {r['devices']}"
    if name == "resnet":
      tf = ("" if r["achieved_tflops_per_s"] is None
            else f"; {r['achieved_tflops_per_s']:.3g} TFLOP/s")
      setting = f"{r['model']}, {r['dtype']}, {r['image']} px, {batch}"
      result = f"{r['images_per_s']:,.1f} img/s; {r['step_ms']:,.2f} ms/step{tf}"
    elif name == "khead":
      setting = f"K head vs dense, {r['shape']}, {r['dtype']}, {batch}, fwd+bwd"
      result = (f"K {r['k_ms']:,.2f} ms, dense {r['dense_ms']:,.2f} ms: "
                f"{r['ratio_k_over_dense']:,.2f}x")
    elif name == "quadratic":
      setting = (f"{r['models']['with']} vs {r['models']['without']}, {r['dtype']}, "
                 f"{r['image']} px, {batch}")
      result = (f"with {r['with_ms']:,.2f} ms, without {r['without_ms']:,.2f} ms: "
                f"{r['ratio_with_over_without']:,.2f}x")
    else:
      setting = f"{r['model']} step, {r['density']:.0%} density vs no masks, {batch}"
      result = (f"masked {r['masked_ms']:,.2f} ms, plain {r['plain_ms']:,.2f} ms: "
                f"{r['ratio_masked_over_plain']:,.2f}x")
    lines.append(f"| {name} | {setting} | {result} | {r['compile_s']:,.1f} | "
                 f"{r['compiles_after_first_step']} |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true", help="shrink everything (a CPU smoke test)")
  p.add_argument("--only", default=",".join(BENCHMARKS),
                 help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
  p.add_argument("--out", type=Path, default=OUT, help=f"the JSON (default {OUT})")
  p.add_argument("--model", default=None,
                 help="the resnet benchmark's registry model (default resnet50; tiny: a miniature)")
  p.add_argument("--image", type=int, default=None, help="resnet/mask image size (default 224)")
  p.add_argument("--batch-per-device", type=int, default=None,
                 help="resnet/mask batch per device (default 256)")
  p.add_argument("--head-batch-per-device", type=int, default=None, help="khead (default 128)")
  p.add_argument("--quadratic-batch-per-device", type=int, default=None,
                 help="quadratic (default 128)")
  p.add_argument("--density", type=float, default=0.08, help="mask: fraction of weights kept")
  p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per arm")
  p.add_argument("--steps", type=int, default=None, help="steps per timed block")
  p.add_argument("--rounds", type=int, default=None, help="timed blocks per arm")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.only = tuple(n.strip() for n in args.only.split(",") if n.strip())
  unknown = [n for n in args.only if n not in BENCHMARKS]
  if unknown or not args.only:
    p.error(f"--only: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(BENCHMARKS)}")
  return args


def sizes_from(args) -> Sizes:
  sizes = TINY if args.tiny else FULL
  overrides = {"resnet_model": args.model, "image": args.image,
               "batch_per_device": args.batch_per_device,
               "head_batch_per_device": args.head_batch_per_device,
               "quadratic_batch_per_device": args.quadratic_batch_per_device,
               "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds}
  sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
  if min(sizes.batch_per_device, sizes.head_batch_per_device, sizes.quadratic_batch_per_device,
         sizes.steps, sizes.rounds) < 1 or sizes.warmup < 0:
    raise SystemExit("batch sizes, --steps and --rounds must be >= 1, --warmup >= 0")
  return sizes


def main(argv=None) -> dict:
  """Runs the benchmarks and writes the JSON; returns its content."""
  args = parse_args(argv)
  sizes = sizes_from(args)
  counter = compile_counter()
  mesh = parallel.make_mesh(jax.local_devices())
  env = environment(mesh)
  dev = env["devices"]
  print(f"jax {env['jax']} (jaxlib {env['jaxlib']}); {dev['count']} x {dev['kind']} "
        f"({dev['platform']}); {'tiny' if args.tiny else 'full'} mode; "
        f"benchmarks: {', '.join(args.only)}", flush=True)
  t_start = time.perf_counter()
  runners = {"resnet": bench_resnet, "khead": bench_khead, "quadratic": bench_quadratic,
             "mask": lambda *a: bench_mask(*a, density=args.density)}
  cache: dict = {}
  results = {}
  for name in BENCHMARKS:           # a fixed order: mask reuses resnet's compiled step
    if name not in args.only:
      continue
    t0 = time.perf_counter()
    results[name] = runners[name](sizes, mesh, args.seed, counter, cache)
    results[name]["wall_s"] = time.perf_counter() - t0
    print(f"{name}: done in {results[name]['wall_s']:.1f} s", flush=True)
  md = table(results)
  after = sum(r["compiles_after_first_step"] for r in results.values())
  result = {
      "mode": "tiny" if args.tiny else "full",
      "environment": env,
      "sizes": dataclasses.asdict(sizes),
      "density": args.density, "seed": args.seed,
      "benchmarks": results,
      "compiles_after_first_step": after,
      "peak_bytes_in_use": peak_memory(mesh),
      "wall_s": time.perf_counter() - t_start,
      "table_markdown": md,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print()
  print(md)
  print()
  print(f"XLA backend compiles after the first steps: {after}; total {result['wall_s']:.1f} s")
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  if main()["compiles_after_first_step"]:
    sys.exit("FAIL: XLA compilation(s) after the first step (see compiles_after_first_step)")
