"""Training throughput: neurojax's jitted train step vs PyTorch eager (CPU).

Two models (`--model`):
  lenet5    Han et al.'s (Caffe) LeNet-5 (conv 20@5x5, max-pool 2, conv 50@5x5,
            max-pool 2, fc 500 + ReLU, fc 10; 431,080 params) on 28x28x1.
  resnet20  He et al.'s CIFAR ResNet-20 (BN, stride-2 convs, option-A
            shortcuts; 269,722 params; the FPGM/Dit model) on 32x32x3.
Every side does the same work per step: forward, softmax cross-entropy with
label smoothing 0.1, backward, and SGD (lr 0.05, momentum 0.9, weight decay
5e-4 on every parameter); BN in training mode (batch statistics, running
statistics updated with momentum 0.1).

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
  torch_compile  (with --torch-compile) the same with `torch.compile(net)`,
               a second anchor.

The host batches are made before each block, outside the timed region. After
the first JAX step no XLA compilation may happen; the script counts backend
compile events and the jitted step's cache entries, and fails if either grows.

`--fastpath off` turns off neurojax's XLA:CPU layer formulations and
compile options (`neurojax.nn.fastpath`; on by default on CPU): the
"before" of the README.

Usage:
  make bench                                   # installs torch (the `convert` extra)
  .venv/bin/python benchmarks/throughput.py [--model lenet5] [--rounds 8] [--steps 25] [--batch 128]
Writes benchmarks/out/throughput_<model>.json.
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

# Run from a checkout without `pip install -e .`: import neurojax from the repo root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
sys.path.insert(1, str(Path(__file__).resolve().parent))   # its sibling accelerator.py

from accelerator import compile_counter  # noqa: E402

from neurojax import models, parallel  # noqa: E402
from neurojax.nn import fastpath  # noqa: E402
from neurojax.train import steps  # noqa: E402
from neurojax.train.state import create_train_state  # noqa: E402

NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.05, 0.9, 5e-4, 0.1
OUT_DIR = Path(__file__).resolve().parent / "out"
NAMES = ("jax_compute", "jax_e2e", "torch")


# --------------------------------------------------------------------------
# Compile counting.

# --------------------------------------------------------------------------
# Data: host batches shared by both frameworks.

def host_batches(rng: np.random.Generator, n: int, batch: int, shape) -> list[dict]:
  """`n` distinct host batches: NHWC float32 images in [0, 1) (like scaled pixels;
  unit Gaussians make this lr diverge within a few hundred steps) and int32 labels."""
  return [{"image": rng.random((batch, *shape), dtype=np.float32),
           "label": rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int32)}
          for _ in range(n)]


def torch_view(b: dict):
  """NCHW torch tensors. With C=1, NHWC has NCHW's memory layout (a reshape,
  no copy); otherwise the transpose is PyTorch's channels-last view, which
  its convs take as is."""
  x = torch.from_numpy(b["image"]).permute(0, 3, 1, 2)
  return x, torch.from_numpy(b["label"]).long()


# --------------------------------------------------------------------------
# neurojax side.

def build_jax(name: str, seed: int):
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get_model(name, num_classes=NUM_CLASSES)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
  state = create_train_state(model, tx, jax.random.PRNGKey(seed), MODELS[name]["shape"],
                             parallel.replicated(mesh))
  step = steps.jit_train_step(
      steps.train_step_fn(model, tx, label_smoothing=LABEL_SMOOTHING), mesh,
      fastpath.compiler_options(model))
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


class TorchBasicBlock(torch.nn.Module):
  """A CIFAR BasicBlock with the option-A shortcut (subsample, zero-pad)."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(cout)
    self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(cout)
    self.stride, self.extra = stride, cout - cin

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    short = x
    if self.stride != 1 or self.extra:
      short = F.pad(x[:, :, ::self.stride, ::self.stride],
                    (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(out + short)


class TorchResNet20(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for stage in range(3):
      for block in range(3):
        cout = 16 * 2**stage
        blocks.append(TorchBasicBlock(cin, cout, 2 if stage and not block else 1))
        cin = cout
    self.blocks = torch.nn.Sequential(*blocks)
    self.fc = torch.nn.Linear(64, NUM_CLASSES)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.fc(x.mean(dim=(2, 3)))


def build_torch(name: str, seed: int):
  torch.manual_seed(seed)
  net = MODELS[name]["torch"]().train()
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  return net, opt, loss_fn


def _t(a):
  return torch.from_numpy(np.ascontiguousarray(a))


def load_lenet5(net: TorchLeNet5, p: dict, stats: dict) -> None:
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


def load_resnet20(net: TorchResNet20, p: dict, stats: dict) -> None:
  """Copies neurojax resnet20 params and BN statistics into `net`."""
  def conv(m, k):
    m.weight.copy_(_t(k["kernel"].transpose(3, 2, 0, 1)))

  def bn(m, k, s):
    m.weight.copy_(_t(k["scale"]))
    m.bias.copy_(_t(k["bias"]))
    m.running_mean.copy_(_t(s["mean"]))
    m.running_var.copy_(_t(s["var"]))
  with torch.no_grad():
    conv(net.conv1, p["conv1"])
    bn(net.bn1, p["bn1"], stats["bn1"])
    for i, block in enumerate(net.blocks):
      name = f"stage{i // 3 + 1}_block{i % 3}"
      for c in ("conv1", "conv2"):
        conv(getattr(block, c), p[name][c])
      for b in ("bn1", "bn2"):
        bn(getattr(block, b), p[name][b], stats[name][b])
    net.fc.weight.copy_(_t(p["fc"]["kernel"].T))
    net.fc.bias.copy_(_t(p["fc"]["bias"]))


def check_params(name, net, p1) -> float:
  """The max |difference| of two updated weights: the first conv and the head."""
  head = net.fc2 if name == "lenet5" else net.fc
  with torch.no_grad():
    torch_head = head.weight.numpy().T
    torch_conv1 = net.conv1.weight.numpy().transpose(2, 3, 1, 0)
  return max(float(np.max(np.abs(torch_head - p1["fc2" if name == "lenet5" else "fc"]["kernel"]))),
             float(np.max(np.abs(torch_conv1 - p1["conv1"]["kernel"]))))


MODELS = {
    "lenet5": {"shape": (28, 28, 1), "params": 431_080, "torch": TorchLeNet5,
               "load": load_lenet5},
    "resnet20": {"shape": (32, 32, 3), "params": 269_722, "torch": TorchResNet20,
                 "load": load_resnet20},
}


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
  p.add_argument("--model", choices=sorted(MODELS), default="lenet5")
  p.add_argument("--fastpath", choices=("auto", "on", "off"), default="auto",
                 help="neurojax.nn.fastpath's XLA:CPU layer formulations (default auto: on on CPU)")
  p.add_argument("--torch-compile", action="store_true",
                 help="also time torch.compile(net) (inductor; compiles for a minute or more)")
  p.add_argument("--out", type=Path, default=None,
                 help=f"JSON output (default {OUT_DIR}/throughput_<model>.json)")
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
  fastpath.set_mode(args.fastpath)
  compiles = compile_counter()   # accelerator.py's: one listener per process
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
  spec = MODELS[args.model]
  mesh, state, step = build_jax(args.model, args.seed)
  net, opt, loss_fn = build_torch(args.model, args.seed)
  n_jax, n_torch = count_params(state.params), sum(p.numel() for p in net.parameters())
  assert n_jax == n_torch == spec["params"], (n_jax, n_torch)
  p0, p0_stats = host_params(state), jax.device_get(state.batch_stats)
  spec["load"](net, p0, p0_stats)

  def batches(n):
    return host_batches(rng, n, args.batch, spec["shape"])
  first = batches(1)[0]
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
  param_diff = check_params(args.model, net, host_params(state))
  print(f"first JAX step (incl. compile): {first_step_s:.2f} s, "
        f"{compiles_first_step} backend compile(s)")
  print(f"same-step check from identical params: loss jax {jax_loss:.6f} vs torch "
        f"{torch_loss:.6f}; max |param diff| after one step {param_diff:.2e}")
  if abs(jax_loss - torch_loss) > 1e-4 or param_diff > 1e-4:
    sys.exit("the JAX and PyTorch steps disagree; the comparison would not be like for like")

  # ---- Warm-up (untimed).
  device_batch = parallel.shard_batch(batches(1)[0], mesh)
  warm = batches(args.warmup)
  state, _ = time_jax_compute(step, state, device_batch, args.warmup)
  state, _ = time_jax_e2e(step, state, mesh, warm)
  time_torch(net, opt, loss_fn, warm)
  names = NAMES
  if args.torch_compile:       # a second anchor: the same net, from the same params
    names = NAMES + ("torch_compile",)
    net_c, opt_c, _ = build_torch(args.model, args.seed)
    spec["load"](net_c, p0, jax.device_get(p0_stats))
    net_c = torch.compile(net_c)
    t0 = time.perf_counter()
    time_torch(net_c, opt_c, loss_fn, warm)
    print(f"torch.compile warm-up (incl. compile): {time.perf_counter() - t0:.1f} s")

  # ---- Interleaved timed rounds.
  rates = {k: [] for k in names}
  for r in range(args.rounds):
    order = names[r % len(names):] + names[:r % len(names)]  # rotate the order each round
    for name in order:
      if name == "jax_compute":
        # A new batch each round: ~80 steps on one batch diverge at this lr.
        device_batch = parallel.shard_batch(batches(1)[0], mesh)
        state, dt = time_jax_compute(step, state, device_batch, args.steps)
      else:
        fresh = batches(args.steps)  # fresh, outside the timing
        if name == "jax_e2e":
          state, dt = time_jax_e2e(step, state, mesh, fresh)
        elif name == "torch":
          dt = time_torch(net, opt, loss_fn, fresh)
        else:
          dt = time_torch(net_c, opt_c, loss_fn, fresh)
      rates[name].append(args.steps * args.batch / dt)
    print(f"round {r + 1}/{args.rounds}: " +
          ", ".join(f"{k} {rates[k][-1]:8.0f} img/s" for k in names), flush=True)

  compiles_after = compiles.count - compiles_after_first
  cache_size = step._cache_size()
  load_end = os.getloadavg()
  median = {k: statistics.median(v) for k, v in rates.items()}
  # Ratios within a round (blocks seconds apart) cancel slow drifts in the load.
  round_ratio = {k: statistics.median(a / b for a, b in zip(rates[k], rates["torch"]))
                 for k in names if k != "torch"}

  # ---- Report.
  def spread(v):
    return f"{min(v):,.0f}–{max(v):,.0f}"
  rows = [
      ("neurojax train step, compute only (same device batch)", "jax_compute"),
      ("neurojax train step, end to end (shard_batch of fresh host batches)", "jax_e2e"),
      (f"PyTorch {torch.__version__} eager, {env['torch_num_threads']} threads", "torch"),
  ]
  if "torch_compile" in names:
    rows.append((f"PyTorch {torch.__version__} torch.compile (inductor)", "torch_compile"))
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
      "config": {"model": args.model, "fastpath": fastpath.enabled(), "params": n_jax,
                 "batch": args.batch, "image_shape": list(spec["shape"]), "rounds": args.rounds, "steps": args.steps,
                 "warmup": args.warmup, "seed": args.seed, "lr": LR, "momentum": MOMENTUM,
                 "weight_decay": WEIGHT_DECAY, "label_smoothing": LABEL_SMOOTHING},
      "images_per_sec": {k: {"median": median[k], "rounds": rates[k]} for k in names},
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
  args.out = args.out or OUT_DIR / f"throughput_{args.model}.json"
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
