"""Per-device train-state memory and collectives, replicated vs FSDP.

For ResNet-152 and ConvNeXt-B (224x224x3, 1000 classes) with AdamW (params,
two moments: 3x the params in float32), the train step is built as the
library builds it (`steps.lower_train_step`, the state laid out by
`parallel.Rules` as `config.parallel.state="fsdp"` gives it) and compiled
for 8 fake CPU devices; nothing runs. For each layout it reports the bytes
of state one device holds (`parallel.per_device_bytes`), the compiled
program's memory analysis (arguments, outputs, temporaries: the arguments
are the state plus the per-device batch), and its collectives
(`parallel.hlo_collectives`): FSDP all-gathers the params where the step
uses them, where the replicated step does not. Both all-reduce the
gradients here: XLA:CPU does not turn FSDP's all-reduce + slice into the
reduce-scatter GPU and TPU compile it to, so the temporaries still hold
whole gradients on CPU.

Usage:
  .venv/bin/python benchmarks/state_memory.py [--models resnet152 convnext_base] [--devices 8]
Writes benchmarks/out/state_memory.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import time
from pathlib import Path

_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), None)
if _DEVICES is None and "--devices" in sys.argv:
  _DEVICES = sys.argv[sys.argv.index("--devices") + 1]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_DEVICES or 8}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("NEUROJAX_FASTPATH", "off")  # the layer formulations a TPU gets

import jax  # noqa: E402
import optax  # noqa: E402

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from neurojax import models, parallel  # noqa: E402
from neurojax.train import steps  # noqa: E402

PER_DEVICE_BATCH = 2
LAYOUTS = {"replicated": None, "fsdp": parallel.Rules()}


def measure(name: str, mesh) -> dict:
  model = models.get_model(name, num_classes=1000)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  n = mesh.devices.size
  out = {"model": name, "devices": n, "optimizer": "adamw", "batch_per_device": PER_DEVICE_BATCH}
  for layout, rules in LAYOUTS.items():
    t0 = time.perf_counter()
    lowered, state = steps.lower_train_step(model, tx, mesh, (224, 224, 3),
                                            PER_DEVICE_BATCH * n, rules=rules)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    ops = collections.defaultdict(lambda: [0, 0])
    for op, sizes in parallel.hlo_collectives(compiled.as_text()):
      ops[op][0] += 1
      ops[op][1] += sum(sizes)
    out[layout] = {
        "state_bytes_per_device": parallel.per_device_bytes(state),
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "collectives": {op: {"count": c, "bytes": b} for op, (c, b) in sorted(ops.items())},
        "compile_s": time.perf_counter() - t0}
    if layout == "replicated":
      out["params"] = sum(x.size for x in jax.tree.leaves(state.params))
  out["state_ratio"] = (out["fsdp"]["state_bytes_per_device"]
                        / out["replicated"]["state_bytes_per_device"])
  return out


def table(rows) -> str:
  gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
  lines = ["| model | params | layout | state per device, GiB | compiled arguments, GiB | "
           "temporaries, GiB | collectives (count, MiB) |", "|---|---:|---|---:|---:|---:|---|"]
  for r in rows:
    for layout in LAYOUTS:
      m = r[layout]
      ops = ", ".join(f"{op} {v['count']} x, {v['bytes'] / 2**20:.0f}"
                      for op, v in m["collectives"].items())
      lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {layout} | "
                   f"{gib(m['state_bytes_per_device'])} | {gib(m['argument_bytes'])} | "
                   f"{gib(m['temp_bytes'])} | {ops} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["resnet152", "convnext_base"])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--out", default=os.path.join(_ROOT, "benchmarks", "out",
                                                    "state_memory.json"))
  args = parser.parse_args()
  mesh = parallel.make_mesh()
  rows = [measure(name, mesh) for name in args.models]
  print(f"{len(jax.devices())} CPU devices, AdamW, batch {PER_DEVICE_BATCH} per device, "
        f"224x224, 1000 classes")
  print(table(rows))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"date": datetime.date.today().isoformat(), "jax": jax.__version__,
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
