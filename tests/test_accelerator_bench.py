"""benchmarks/accelerator.py in --tiny mode on the test session's 8 CPU devices.

Runs its `main(argv)` in this process (no new JAX start-up) and checks the
JSON: every benchmark is there with positive, finite figures, and no XLA
compilation happened after any arm's first step. Tiny mode uses smaller
models than the accelerator run (a one-block bottleneck ResNet instead of
ResNet-50, depth-8 CifarResNets instead of the ResNet-20 configs' models, a
64 -> 32 -> 10 K head; see the script's docstring), because on a CPU the
XLA compiles, above all of the models' random inits, are what take the
time. With the session's persistent compilation cache (conftest.py) warm
this takes a few seconds; cold, about a minute on a loaded 2-core machine.
"""

import json
import math

import jax

import bench_helpers
from bench_helpers import assert_positive


def test_accelerator_tiny(tmp_path):
  bench = bench_helpers.load("accelerator")
  out = tmp_path / "a.json"
  returned = bench.main(["--tiny", "--out", str(out)])
  result = json.loads(out.read_text())
  assert result == json.loads(json.dumps(returned))
  assert result["mode"] == "tiny"

  env = result["environment"]
  assert env["jax"] == jax.__version__ and env["jaxlib"]
  assert env["devices"]["count"] == jax.local_device_count() == 8
  assert env["devices"]["platform"] == "cpu"

  b = result["benchmarks"]
  assert set(b) == set(bench.BENCHMARKS) == {"resnet", "khead", "quadratic", "mask"}
  figures = {"resnet": ("images_per_s", "step_ms", "first_step_s", "xla_flops_per_step",
                        "achieved_tflops_per_s"),
             "khead": ("k_ms", "dense_ms", "ratio_k_over_dense"),
             "quadratic": ("with_ms", "without_ms", "ratio_with_over_without"),
             "mask": ("masked_ms", "plain_ms", "ratio_masked_over_plain")}
  for name, keys in figures.items():
    for key in keys:
      assert_positive(b[name][key], f"{name}.{key}")
    assert math.isfinite(b[name]["compile_s"]) and b[name]["compile_s"] >= 0
    assert b[name]["compiles_after_first_step"] == 0, name
  assert b["resnet"]["global_batch"] == 2 * 8
  assert b["resnet"]["dtype"] == "bfloat16"
  for name in ("quadratic", "mask"):
    for loss in b[name]["final_loss"].values():
      assert math.isfinite(loss)
  assert b["quadratic"]["params"]["with"] > b["quadratic"]["params"]["without"]
  assert b["mask"]["pruned_weights_still_zero"]
  assert 0 < b["mask"]["kept_weights"] < b["mask"]["maskable_weights"]
  assert result["compiles_after_first_step"] == 0
  assert "| resnet |" in result["table_markdown"] and "| mask |" in result["table_markdown"]
