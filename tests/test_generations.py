"""The generational driver: resets, restarts and records per generation."""

import json

import numpy as np
import pytest

from neurojax.methods import generations

GENS = ["--config.method=generations", "--config.num_steps=16", "--config.batch_size=32",
        "--config.generations.num_generations=3", "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=1000", "--config.log_every_steps=1",
        "--config.schedule.warmup_epochs=0.5"]


@pytest.fixture(scope="module")
def dnr_run(tmp_path_factory):
  from cli import TINY, run
  workdir = tmp_path_factory.mktemp("dnr")
  proc = run(workdir, *GENS, "--config.generations.policy=dnr", "--config.model.width=4",
             config=TINY + ":resnet20")
  return workdir, proc


def test_dnr_resets_the_least_salient_fifth_each_generation(dnr_run):
  workdir, proc = dnr_run
  results = json.loads((workdir / "results.json").read_text())
  rows = results["generations"]
  assert [r["generation"] for r in rows] == [0, 1, 2] and all(r["top1"] is not None for r in rows)
  masks = [generations.load_mask(str(workdir), g) for g in (1, 2)]
  assert generations.load_mask(str(workdir), 0) is None
  for row, mask in zip(rows[1:], masks):
    eligible = sum(m.size for m in mask.values())
    assert row["reset"] == eligible - round(0.8 * eligible)
    assert all(p.endswith("kernel") and "downsample" not in p for p in mask)
  assert rows[1]["overlap"] is None                 # nothing to compare with
  assert 0.5 < rows[2]["overlap"] < 1.0       # the mask moves between generations
  assert (workdir / "generations.png").stat().st_size > 10_000
  assert "generation" in proc.stdout and "overlap" in proc.stdout


def test_each_generation_restarts_the_schedule(dnr_run):
  workdir, _ = dnr_run
  lr = {}
  with open(workdir / "metrics.jsonl") as f:
    for line in f:
      r = json.loads(line)
      if "train/lr" in r:
        lr[r["step"]] = r["train/lr"]
  # Warm-up over 8 steps then cosine, restarting at steps 16 and 32.
  np.testing.assert_allclose([lr[1], lr[17], lr[33]], lr[1])
  np.testing.assert_allclose([lr[8], lr[24], lr[40]], lr[8])
  assert lr[1] < lr[8] and lr[16] < lr[8]


def test_bad_policy_is_refused_before_training(tmp_path):
  from cli import run
  proc = run(tmp_path / "w", "--config.method=generations",
             "--config.generations.policy=dnrr", check=False)
  assert proc.returncode != 0 and "dnr, ke, llf, layerwise, none" in proc.stderr
