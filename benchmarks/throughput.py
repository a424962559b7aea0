"""Training throughput of LeNet-5: neurojax's jitted train step vs PyTorch eager (CPU).

The model is Han et al.'s (Caffe) LeNet-5 (conv 20@5x5, max-pool 2, conv 50@5x5,
max-pool 2, fc 500 + ReLU, fc 10; 431,080 params) on 28x28x1 inputs. Every
side does the same work per step: forward, softmax cross-entropy with label
smoothing 0.1, backward, and SGD (lr 0.05, momentum 0.9, weight decay 5e-4).

Three benchmarks, run interleaved in blocks of `--steps` steps for `--rounds`
rounds (the order rotates every round, so slow phases of a shared machine hit
all of them alike); each reports the median images/s over rounds:

  jax_compute  neurojax's train step (built as neurojax.main builds it) on one
               device batch reused every step: the step alone.
  jax_e2e      the same step, fed like `neurojax.train.loop.fit`: a fresh host
               (numpy) batch per step, put on the mesh with
               `parallel.shard_batch`, metrics fetched at the end of the block.
  torch        PyTorch eager: zero_grad / forward / backward / step on fresh
               host batches (`torch.from_numpy`, no copy).

The host batches are made before each block, outside the timed region. After
the first JAX step no XLA compilation may happen; the script counts backend
compile events and the jitted step's cache entries, and fails if either grows.

Usage:
  make bench                                   # installs torch (the `convert` extra)
  .venv/bin/python benchmarks/throughput.py [--rounds 8] [--steps 25] [--batch 128]
Writes benchmarks/out/throughput.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
  sys.exit("benchmarks/throughput.py needs PyTorch, which is not installed.\n"
           "Install it with:  .venv/bin/pip install -e '.[convert]'   (or run `make bench`).")

import jax
import optax
from jax._src import dispatch

# Run from a checkout without `pip install -e .`: import neurojax from the repo root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from neurojax import models, parallel  # noqa: E402
from neurojax.train import steps  # noqa: E402
from neurojax.train.state import create_train_state  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LENET5_PARAMS = 431_080
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.05, 0.9, 5e-4, 0.1
OUT = Path(__file__).resolve().parent / "out" / "throughput.json"
NAMES = ("jax_compute", "jax_e2e", "torch")


# --------------------------------------------------------------------------
# Compile counting.

class CompileCounter:
  """Counts XLA backend compilations (jax.monitoring duration events)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event: str, duration_secs: float, **kwargs) -> None:
    if event == dispatch.BACKEND_COMPILE_EVENT:
      self.count += 1


# --------------------------------------------------------------------------
# Data: host batches shared by both frameworks.

def host_batches(rng: np.random.Generator, n: int, batch: int) -> list[dict]:
  """`n` distinct host batches: NHWC float32 images in [0, 1) (like scaled pixels;
  unit Gaussians make this lr diverge within a few hundred steps) and int32 labels."""
  return [{"image": rng.random((batch, *IMAGE_SHAPE), dtype=np.float32),
           "label": rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int32)}
          for _ in range(n)]


def torch_view(b: dict):
  """NHWC with C=1 has the memory layout of NCHW: a reshape, no copy."""
  x = torch.from_numpy(b["image"]).reshape(-1, 1, *IMAGE_SHAPE[:2])
  return x, torch.from_numpy(b["label"]).long()


# --------------------------------------------------------------------------
# neurojax side.

def build_jax(seed: int):
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get_model("lenet5", num_classes=NUM_CLASSES)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
  state = create_train_state(model, tx, jax.random.PRNGKey(seed), IMAGE_SHAPE,
                             parallel.replicated(mesh))
  step = steps.jit_train_step(
      steps.train_step_fn(model, tx, label_smoothing=LABEL_SMOOTHING), mesh)
  return mesh, state, step


def host_params(state) -> dict:
  """A host copy of the params (copied, since the state's buffers are donated)."""
  return jax.tree.map(lambda a: np.array(a, copy=True), state.params)


def count_params(tree) -> int:
  return sum(int(np.size(a)) for a in jax.tree.leaves(tree))


# --------------------------------------------------------------------------
# PyTorch side.

class TorchLeNet5(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(1, 20, 5)
    self.conv2 = torch.nn.Conv2d(20, 50, 5)
    self.fc1 = torch.nn.Linear(4 * 4 * 50, 500)
    self.fc2 = torch.nn.Linear(500, NUM_CLASSES)

  def forward(self, x):
    x = F.max_pool2d(self.conv1(x), 2)
    x = F.max_pool2d(self.conv2(x), 2)
    x = F.relu(self.fc1(torch.flatten(x, 1)))
    return self.fc2(x)


def build_torch(seed: int):
  torch.manual_seed(seed)
  net = TorchLeNet5().train()
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  return net, opt, loss_fn


def load_flax_params(net: TorchLeNet5, p: dict) -> None:
  """Copies neurojax LeNet-5 params (HWIO kernels, NHWC flatten) into `net`."""
  def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))
  # fc1's input rows are in (h, w, c) order in Flax and (c, h, w) in torch.
  fc1 = p["fc1"]["kernel"].reshape(4, 4, 50, 500).transpose(2, 0, 1, 3).reshape(800, 500)
  with torch.no_grad():
    net.conv1.weight.copy_(t(p["conv1"]["kernel"].transpose(3, 2, 0, 1)))
    net.conv2.weight.copy_(t(p["conv2"]["kernel"].transpose(3, 2, 0, 1)))
    net.fc1.weight.copy_(t(fc1.T))
    net.fc2.weight.copy_(t(p["fc2"]["kernel"].T))
    for name in ("conv1", "conv2", "fc1", "fc2"):
      getattr(net, name).bias.copy_(t(p[name]["bias"]))


def torch_step(net, opt, loss_fn, x, y):
  opt.zero_grad(set_to_none=True)
  loss = loss_fn(net(x), y)
  loss.backward()
  opt.step()
  return loss


# --------------------------------------------------------------------------
# Timed blocks. Each returns images/s over `len(batches)` steps.

def time_jax_compute(step, state, device_batch, n: int):
  t0 = time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, device_batch)
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t0
  return state, dt


def time_jax_e2e(step, state, mesh, batches: list[dict]):
  pending = []
  t0 = time.perf_counter()
  for b in batches:
    state, metrics = step(state, parallel.shard_batch(b, mesh))
    pending.append(metrics)
  values = jax.device_get(pending)  # as the training loop's log flush does
  jax.block_until_ready(state)
  dt = time.perf_counter() - t0
  if not all(np.isfinite(v["loss"]) for v in values):
    sys.exit("the JAX training loss became non-finite; timings would not be meaningful")
  return state, dt


def time_torch(net, opt, loss_fn, batches: list[dict]):
  views = [torch_view(b) for b in batches]
  t0 = time.perf_counter()
  for x, y in views:
    loss = torch_step(net, opt, loss_fn, x, y)
  value = loss.item()  # eager CPU ops are synchronous; this only reads the result
  dt = time.perf_counter() - t0
  if not np.isfinite(value):
    sys.exit("the PyTorch training loss became non-finite; timings would not be meaningful")
  return dt


# --------------------------------------------------------------------------

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
  p.add_argument("--steps", type=int, default=25, help="steps per timed block (default 25)")
  p.add_argument("--batch", type=int, default=128, help="global batch size (default 128)")
  p.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps per benchmark")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
  return p.parse_args(argv)


def environment() -> dict:
  return {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "jax": jax.__version__,
      "jaxlib": _jaxlib_version(),
      "torch": torch.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "jax_device_count": jax.device_count(),
      "os_cpu_count": os.cpu_count(),
      "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "torch_num_threads": torch.get_num_threads(),
      "torch_num_interop_threads": torch.get_num_interop_threads(),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def _jaxlib_version():
  try:
    import jaxlib
    return jaxlib.__version__
  except Exception:  # pragma: no cover
    return None


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.rounds < 1 or args.steps < 1 or args.batch < 1:
    sys.exit("--rounds, --steps and --batch must be positive")
  compiles = CompileCounter()
  env = environment()
  load_start = os.getloadavg()
  print(f"jax {env['jax']} (jaxlib {env['jaxlib']}), backend {env['jax_backend']}, "
        f"devices {env['jax_devices']}")
  print(f"torch {env['torch']}, torch.get_num_threads() = {env['torch_num_threads']} (default), "
        f"interop threads {env['torch_num_interop_threads']}")
  print(f"CPUs: os.cpu_count() = {env['os_cpu_count']}, available = {env['cpus_available']}; "
        f"load average at start: {', '.join(f'{x:.2f}' for x in load_start)}")
  print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps per benchmark, "
        f"{args.warmup} warm-up steps")

  rng = np.random.default_rng(args.seed)

  # ---- Build both sides and check they compute the same step.
  mesh, state, step = build_jax(args.seed)
  net, opt, loss_fn = build_torch(args.seed)
  n_jax, n_torch = count_params(state.params), sum(p.numel() for p in net.parameters())
  assert n_jax == n_torch == LENET5_PARAMS, (n_jax, n_torch)
  p0 = host_params(state)
  load_flax_params(net, p0)

  first = host_batches(rng, 1, args.batch)[0]
  compiles_before_first = compiles.count
  t0 = time.perf_counter()
  state, metrics = step(state, parallel.shard_batch(first, mesh))
  jax.block_until_ready((state, metrics))
  first_step_s = time.perf_counter() - t0
  compiles_first_step = compiles.count - compiles_before_first
  compiles_after_first = compiles.count
  cache_after_first = step._cache_size()

  torch_loss = torch_step(net, opt, loss_fn, *torch_view(first)).item()
  jax_loss = float(metrics["loss"])
  p1 = host_params(state)
  with torch.no_grad():
    torch_fc2 = net.fc2.weight.numpy().T
    torch_conv1 = net.conv1.weight.numpy().transpose(2, 3, 1, 0)
  param_diff = max(float(np.max(np.abs(torch_fc2 - p1["fc2"]["kernel"]))),
                   float(np.max(np.abs(torch_conv1 - p1["conv1"]["kernel"]))))
  print(f"first JAX step (incl. compile): {first_step_s:.2f} s, "
        f"{compiles_first_step} backend compile(s)")
  print(f"same-step check from identical params: loss jax {jax_loss:.6f} vs torch "
        f"{torch_loss:.6f}; max |param diff| after one step {param_diff:.2e}")
  if abs(jax_loss - torch_loss) > 1e-4 or param_diff > 1e-4:
    sys.exit("the JAX and PyTorch steps disagree; the comparison would not be like for like")

  # ---- Warm-up (untimed).
  device_batch = parallel.shard_batch(host_batches(rng, 1, args.batch)[0], mesh)
  warm = host_batches(rng, args.warmup, args.batch)
  state, _ = time_jax_compute(step, state, device_batch, args.warmup)
  state, _ = time_jax_e2e(step, state, mesh, warm)
  time_torch(net, opt, loss_fn, warm)

  # ---- Interleaved timed rounds.
  rates = {k: [] for k in NAMES}
  for r in range(args.rounds):
    order = NAMES[r % 3:] + NAMES[:r % 3]  # rotate the order each round
    for name in order:
      if name == "jax_compute":
        state, dt = time_jax_compute(step, state, device_batch, args.steps)
      else:
        batches = host_batches(rng, args.steps, args.batch)  # fresh, outside the timing
        if name == "jax_e2e":
          state, dt = time_jax_e2e(step, state, mesh, batches)
        else:
          dt = time_torch(net, opt, loss_fn, batches)
      rates[name].append(args.steps * args.batch / dt)
    print(f"round {r + 1}/{args.rounds}: " +
          ", ".join(f"{k} {rates[k][-1]:8.0f} img/s" for k in NAMES), flush=True)

  compiles_after = compiles.count - compiles_after_first
  cache_size = step._cache_size()
  load_end = os.getloadavg()
  median = {k: statistics.median(v) for k, v in rates.items()}
  # Ratios within a round (blocks seconds apart) cancel slow drifts in the load.
  round_ratio = {k: statistics.median(a / b for a, b in zip(rates[k], rates["torch"]))
                 for k in ("jax_compute", "jax_e2e")}

  # ---- Report.
  def spread(v):
    return f"{min(v):,.0f}–{max(v):,.0f}"
  rows = [
      ("neurojax train step, compute only (same device batch)", "jax_compute"),
      ("neurojax train step, end to end (shard_batch of fresh host batches)", "jax_e2e"),
      (f"PyTorch {torch.__version__} eager, {env['torch_num_threads']} threads", "torch"),
  ]
  lines = ["| benchmark | median images/s | min–max over rounds | ratio vs torch |",
           "|---|---:|---:|---:|"]
  for label, k in rows:
    lines.append(f"| {label} | {median[k]:,.0f} | {spread(rates[k])} | "
                 f"{median[k] / median['torch']:.2f}x |")
  table = "\n".join(lines)
  print()
  print(table)
  print()
  print(f"ratio jax/torch (of medians): compute only {median['jax_compute'] / median['torch']:.2f}x, "
        f"end to end {median['jax_e2e'] / median['torch']:.2f}x; median of per-round ratios: "
        f"{round_ratio['jax_compute']:.2f}x and {round_ratio['jax_e2e']:.2f}x")
  print(f"XLA backend compiles: {compiles_first_step} in the first step, "
        f"{compiles_after} after it; step._cache_size() = {cache_after_first} after the first "
        f"step, {cache_size} at the end")
  print(f"load average at end: {', '.join(f'{x:.2f}' for x in load_end)}")

  result = {
      "environment": env,
      "config": {"model": "lenet5", "params": n_jax, "batch": args.batch,
                 "image_shape": list(IMAGE_SHAPE), "rounds": args.rounds, "steps": args.steps,
                 "warmup": args.warmup, "seed": args.seed, "lr": LR, "momentum": MOMENTUM,
                 "weight_decay": WEIGHT_DECAY, "label_smoothing": LABEL_SMOOTHING},
      "images_per_sec": {k: {"median": median[k], "rounds": rates[k]} for k in NAMES},
      "ratio_jax_over_torch": {"compute": median["jax_compute"] / median["torch"],
                               "e2e": median["jax_e2e"] / median["torch"],
                               "compute_median_of_round_ratios": round_ratio["jax_compute"],
                               "e2e_median_of_round_ratios": round_ratio["jax_e2e"]},
      "compiles": {"first_step_backend_compiles": compiles_first_step,
                   "backend_compiles_after_first_step": compiles_after,
                   "step_cache_size_after_first_step": cache_after_first,
                   "step_cache_size_at_end": cache_size},
      "first_step_seconds": first_step_s,
      "same_step_check": {"jax_loss": jax_loss, "torch_loss": torch_loss,
                          "max_abs_param_diff": param_diff},
      "load_average": {"start": list(load_start), "end": list(load_end)},
      "table_markdown": table,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.out}")

  if compiles_after or cache_size != cache_after_first:
    sys.exit(f"FAIL: {compiles_after} XLA compilation(s) after the first step "
             f"(cache size {cache_after_first} -> {cache_size})")
  print("OK: no XLA compilation after the first step")
  return result


if __name__ == "__main__":
  main()
