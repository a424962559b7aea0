"""Communication per step: the all-reduce bytes of neurojax's train step,
read from its compiled HLO, and what they would cost on a TPU v4-32.

For LeNet-5 (28x28x1), ResNet-20 (CIFAR, 32x32x3) and ResNet-50 (ImageNet,
224x224x3, 1000 classes) the train step is built as the library builds it
(`create_train_state`, `steps.jit_train_step(steps.train_step_fn(...))`,
replicated state, batch sharded on `data`), lowered and compiled for 8 fake
CPU devices (nothing runs), and `parallel.hlo_collectives` reads its
collectives. The payload of a data-parallel all-reduce does not depend on
the number of devices, so the 8-device bytes are the bytes of any slice.

The TPU v4-32 estimate (16 chips; "32" counts TensorCores): a ring
all-reduce of B bytes sends and receives 2 (n - 1) / n * B per chip. It is
timed over one ICI link (a single one-way ring: the slow bound) and over
all 6 links of a chip (the fast bound), and set against the step's compute
at a per-chip batch of 128 and 50% MFU, with the training FLOPs per example
from `compiled.cost_analysis()` (XLA:CPU's count of the per-device program;
bf16 on the TPU does the same FLOPs). Latency (the small all-reduces of
BatchNorm, one per layer and pass) is not modelled.

Usage:
  .venv/bin/python benchmarks/comms.py
Writes benchmarks/out/comms.json.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("NEUROJAX_FASTPATH", "off")  # the layer formulations a TPU gets

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from neurojax import models, parallel  # noqa: E402
from neurojax.train import steps  # noqa: E402

MODELS = {"lenet5": ((28, 28, 1), 10), "resnet20": ((32, 32, 3), 10),
          "resnet50": ((224, 224, 3), 1000)}
PER_DEVICE_BATCH = 2          # for the compile (FLOPs per example = per-device FLOPs / 2)

# TPU v4, per chip. Peak bf16: 275 TFLOPS (Cloud TPU v4 docs,
# https://cloud.google.com/tpu/docs/v4). ICI: 6 links per chip (3D torus),
# taken as 50 GB/s per link per direction, the figure for TPU v4 in Jouppi
# et al., "TPU v4: An Optically Reconfigurable Supercomputer ...", ISCA 2023
# (arXiv:2304.01433); the JAX scaling book lists 45 GB/s one-way per v4p link.
# A check on the fast bound: the same Cloud docs give an "all-reduce bandwidth
# per Pod" of 1.1 PB/s over 4,096 chips, i.e. 269 GB/s per chip (6 x 50 = 300).
PEAK_FLOPS = 275e12
LINK_BYTES_S = 50e9
LINKS = 6
CHIPS = 16                    # v4-32
PER_CHIP_BATCH = 128
MFU = 0.5
OUT = Path(__file__).resolve().parent / "out" / "comms.json"


def measure(name: str) -> dict:
  shape, num_classes = MODELS[name]
  mesh = parallel.make_mesh()
  model = models.get_model(name, num_classes=num_classes)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  t0 = time.perf_counter()
  lowered, state = steps.lower_train_step(model, tx, mesh, shape,
                                          PER_DEVICE_BATCH * mesh.devices.size)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  colls = parallel.hlo_collectives(compiled.as_text())
  if {op for op, _ in colls} != {"all-reduce"}:
    sys.exit(f"{name}: unexpected collectives {sorted({op for op, _ in colls})}")
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  bn_channels = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.batch_stats)) // 2
  total = sum(sum(arrays) for _, arrays in colls)
  flops = float(cost["flops"]) / PER_DEVICE_BATCH if cost and "flops" in cost else None

  ring = 2 * (CHIPS - 1) / CHIPS * total
  t_slow, t_fast = ring / LINK_BYTES_S, ring / (LINKS * LINK_BYTES_S)
  t_compute = flops * PER_CHIP_BATCH / (PEAK_FLOPS * MFU) if flops else None
  return {"model": name, "input": list(shape), "params": params, "bn_channels": bn_channels,
          "all_reduces": len(colls), "all_reduce_bytes": total, "grad_bytes": 4 * params,
          "extra_bytes": total - 4 * params, "train_flops_per_example": flops,
          "compile_s": round(compile_s, 1), "ring_bytes_per_chip": ring,
          "all_reduce_s_1_link": t_slow, "all_reduce_s_6_links": t_fast,
          "compute_s": t_compute,
          "comm_over_compute_1_link": t_slow / t_compute if t_compute else None,
          "comm_over_compute_6_links": t_fast / t_compute if t_compute else None}


def table(rows) -> str:
  def ms(s):
    return f"{s * 1e3:.3g}"
  out = ["| model | params | all-reduces | all-reduce bytes/step | = grads + extra | "
         "train GFLOP/example | ring bytes/chip | all-reduce ms (1 / 6 links) | "
         f"compute ms ({PER_CHIP_BATCH}/chip, {MFU:.0%} MFU) | comm/compute (1 / 6 links) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    out.append(
        f"| {r['model']} {'x'.join(map(str, r['input']))} | {r['params']:,} | {r['all_reduces']} "
        f"| {r['all_reduce_bytes']:,} | {r['grad_bytes']:,} + {r['extra_bytes']:,} "
        f"| {r['train_flops_per_example'] / 1e9:.3g} | {r['ring_bytes_per_chip'] / 1e6:.3g} MB "
        f"| {ms(r['all_reduce_s_1_link'])} / {ms(r['all_reduce_s_6_links'])} "
        f"| {ms(r['compute_s'])} "
        f"| {r['comm_over_compute_1_link']:.2g} / {r['comm_over_compute_6_links']:.2g} |")
  return "\n".join(out)


def main() -> None:
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices; "
        f"TPU v4-{2 * CHIPS}: {CHIPS} chips, {LINKS} ICI links x {LINK_BYTES_S / 1e9:g} GB/s, "
        f"{PEAK_FLOPS / 1e12:g} TFLOPS bf16")
  rows = []
  for name in MODELS:
    rows.append(measure(name))
    print(f"  {name}: compiled in {rows[-1]['compile_s']} s", flush=True)
  print(table(rows))
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(json.dumps({
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__, "devices": jax.device_count(),
      "per_device_batch_compiled": PER_DEVICE_BATCH,
      "tpu_v4": {"chips": CHIPS, "peak_bf16_flops": PEAK_FLOPS, "ici_links": LINKS,
                 "ici_link_bytes_s_one_way": LINK_BYTES_S, "per_chip_batch": PER_CHIP_BATCH,
                 "mfu": MFU},
      "models": rows}, indent=2) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
