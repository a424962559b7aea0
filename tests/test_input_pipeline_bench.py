"""benchmarks/input_pipeline.py in --tiny mode (16 small JPEGs, crop 32, 1 round).

Runs its `main(argv)` in this process and checks: every arm's figures are
positive and finite; the neurojax arms' batches have the crop's shape and
are the very batch `TrainData.batch(0)` gives, whether computed by grain
threads or by 1 or 2 grain worker processes; that batch is the same for a
fixed seed and differs for another; and the array_record file and the
class-folder tree give back exactly the JPEG bytes and labels written.
Most of its ~15 s is the grain workers' start-up (each spawned worker
imports grain, hence jax) and importing torch.
"""

import json

import numpy as np

import bench_helpers
from bench_helpers import assert_positive


def test_input_pipeline_tiny(tmp_path):
  bench = bench_helpers.load("input_pipeline")
  data_dir, out = tmp_path / "data", tmp_path / "ip.json"
  returned = bench.main(["--tiny", "--dir", str(data_dir), "--json", str(out)])
  result = json.loads(out.read_text())
  assert result == json.loads(json.dumps(returned))
  assert result["mode"] == "tiny"
  sizes = bench.TINY

  arms = result["arms"]
  assert set(arms) == {"neurojax threads", "neurojax 1 proc", "neurojax 2 procs",
                       "torchvision 0 workers", "torchvision 1 worker", "torchvision 2 workers"}
  for name, arm in arms.items():
    for key in ("images_per_s", "images_per_s_per_process", "images_per_cpu_s", "cores_busy",
                "cores_per_v4_chip"):
      assert_positive(arm[key], f"{name}.{key}")
    if name.startswith("neurojax"):
      assert arm["shape"] == [sizes.batch, sizes.crop, sizes.crop, 3], name
      assert arm["digest"] == result["reference_digest"], name  # threads and workers agree
    else:
      assert arm["shape"] == [sizes.batch, 3, sizes.crop, sizes.crop], name
  for name, ratio in result["ratios"].items():
    assert_positive(ratio["images_per_s"], name)
    assert_positive(ratio["images_per_cpu_s"], name)
  for side in ("neurojax", "torchvision"):
    assert_positive(result["cores_per_v4_chip"][side]["cores"], side)
  assert "| neurojax 2 procs |" in result["table_markdown"]

  # The neurojax crops: shape, normalised float32, deterministic for a seed.
  a = bench.neurojax_train_data(str(data_dir), sizes, seed=0).batch(0)
  b = bench.neurojax_train_data(str(data_dir), sizes, seed=0).batch(0)
  c = bench.neurojax_train_data(str(data_dir), sizes, seed=1).batch(0)
  assert a["image"].shape == (sizes.batch, sizes.crop, sizes.crop, 3)
  assert a["image"].dtype == np.float32 and np.isfinite(a["image"]).all()
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert bench.batch_digest(a) == result["reference_digest"]
  assert not np.array_equal(a["image"], c["image"])

  # The array_record round trip, and the folder tree torchvision reads.
  written = bench.write_dataset(str(tmp_path / "again"), sizes, seed=0)
  assert len(written) == sizes.images
  assert all(jpeg[:2] == b"\xff\xd8" for jpeg, _ in written)  # JPEG start-of-image
  assert sorted({label for _, label in written}) == list(range(sizes.classes))
  assert bench.read_records(str(tmp_path / "again" / bench.RECORDS)) == written
  assert bench.read_records(str(data_dir / bench.RECORDS)) == written  # same seed, same bytes
  for i, (jpeg, label) in enumerate(written):
    path = tmp_path / "again" / bench.FOLDER / f"c{label:03d}" / f"{i:06d}.jpg"
    assert path.read_bytes() == jpeg
