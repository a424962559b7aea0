"""TensorBoard output read back with TensorBoard's own event reader.

One tiny supervised run (12 steps on synthetic data, in this process) is run
three times in one workdir: to the end; resumed from step 8 after losing the
checkpoint of step 12 (as if killed after steps 10 and 12 were logged); and
run again once finished (trains nothing, reports again). Its `tb/` must then
hold exactly what metrics.jsonl holds, once per step, and the run's plots as
images, once each.
"""

import io
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from neurojax import methods
from neurojax.train import writers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 12
PLOTS = ("curves", "reliability")     # plot_training_curves, and supervised's own plot


def _config():
  c = tiny_config.get_config()
  c.num_steps = STEPS
  c.log_every_steps = 2
  c.eval_every_steps = 6
  c.checkpoint_every_steps = 4
  return c


def _read(tb) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(
      str(tb), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
                              event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _steps(acc) -> dict[str, list[int]]:
  tags = acc.Tags()
  return {**{t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]},
          **{t: [e.step for e in acc.Images(t)] for t in tags["images"]}}


def _jsonl(workdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of metrics.jsonl."""
  out: dict[str, list] = {}
  for record in writers.read_metrics(str(workdir)):
    for k, v in record.items():
      if k != "step":
        out.setdefault(k, []).append((record["step"], v))
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tb_run")
  run_once = lambda: methods.get("supervised")(_config(), str(workdir))
  run_once()
  first = {"steps": _steps(_read(workdir / "tb")), "jsonl": _jsonl(workdir)}
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))   # killed before step 12 committed
  run_once()                                            # resumes from step 8
  resumed = _steps(_read(workdir / "tb"))
  run_once()                                            # finished: reports again
  return {"workdir": workdir, "acc": _read(workdir / "tb"), "first": first, "resumed": resumed}


def test_scalars_equal_metrics_jsonl(run):
  acc, jsonl = run["acc"], _jsonl(run["workdir"])
  assert {"train/loss", "train/top1", "eval/top1", "eval/loss"} <= set(jsonl)
  assert sorted(acc.Tags()["scalars"]) == sorted(jsonl)
  for tag, records in jsonl.items():
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [s for s, _ in records], tag
    np.testing.assert_allclose([e.value for e in events], [v for _, v in records],
                               rtol=1e-6, atol=1e-30, err_msg=tag)   # float32 in the events


def test_the_first_run_alone_matched_too(run):
  """The same before any resume: the steps that the resume rewrote were there."""
  first = run["first"]
  assert {t: s for t, s in first["steps"].items() if t not in PLOTS} == \
      {t: [s for s, _ in r] for t, r in first["jsonl"].items()}
  assert first["steps"]["train/loss"][-2:] == [10, 12]
  assert first["steps"]["eval/top1"] == [6, 12]


def test_plots_are_images_at_the_last_step_with_the_png_size(run):
  acc, workdir = run["acc"], run["workdir"]
  assert sorted(acc.Tags()["images"]) == sorted(PLOTS)
  for tag in PLOTS:
    (event,) = acc.Images(tag)
    assert event.step == STEPS
    with Image.open(workdir / f"{tag}.png") as png:
      size = png.size
    with Image.open(io.BytesIO(event.encoded_image_string)) as decoded:
      assert decoded.size == size == (event.width, event.height), tag
      assert decoded.mode == "RGB"
      assert np.asarray(decoded).std() > 0        # a drawing, not a blank


@pytest.mark.parametrize("after", ["the first run", "the resume from step 8", "all three"])
def test_no_step_appears_twice(run, after):
  steps = {"the first run": run["first"]["steps"], "the resume from step 8": run["resumed"],
           "all three": _steps(run["acc"])}[after]
  assert {"train/loss", "eval/top1", *PLOTS} <= set(steps)
  for tag, s in steps.items():
    assert len(s) == len(set(s)) and s == sorted(s), (tag, s)
  assert steps["train/loss"] == list(range(2, STEPS + 1, 2))


def test_a_writer_opened_in_the_same_second_keeps_the_first_ones_events(tmp_path, monkeypatch):
  """tensorboardX names event files by the second: the second writer must not
  overwrite the first's file (a resume right after a short run)."""
  monkeypatch.setattr("time.time", lambda: 1_800_000_000.0)
  w = writers.MetricWriter(str(tmp_path))
  w.write(1, {"x": 1.0})
  w.write(2, {"x": 2.0})
  w.close()
  w = writers.MetricWriter(str(tmp_path), resume_step=1)    # purges step 2
  w.write(2, {"x": 3.0})
  w.write(3, {"x": 4.0})
  w.close()
  events = _read(tmp_path / "tb").Scalars("x")
  assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 3.0), (3, 4.0)]


def test_write_plots_skips_a_run_without_tensorboard(tmp_path):
  Image.new("RGB", (4, 3), "red").save(tmp_path / "p.png")
  assert writers.write_plots(str(tmp_path), [str(tmp_path / "p.png")], 5) == []
  (tmp_path / "tb").mkdir()
  assert writers.write_plots(str(tmp_path), [str(tmp_path / "p.png")], 5) == ["p"]
  assert writers.write_plots(str(tmp_path), [str(tmp_path / "p.png")], 5) == []   # once
  (event,) = _read(tmp_path / "tb").Images("p")
  assert (event.step, event.width, event.height) == (5, 4, 3)


def test_a_prune_runs_plot_is_an_image_too(tmp_path):
  """Another method's plot (accuracy_vs_sparsity.png), through the same report.write."""
  c = _config()
  c.method = "prune"
  c.data.synthetic_train_size = 128          # 4 steps an epoch
  c.num_steps = 4
  c.prune.targets = (0.5,)
  c.prune.retrain.epochs = 1
  methods.get("prune")(c, str(tmp_path))
  acc = _read(tmp_path / "tb")
  last = max(r["step"] for r in writers.read_metrics(str(tmp_path)))
  assert last == 8 and "accuracy_vs_sparsity" in acc.Tags()["images"]
  (event,) = acc.Images("accuracy_vs_sparsity")
  with Image.open(tmp_path / "accuracy_vs_sparsity.png") as png:
    assert (event.step, event.width, event.height) == (last, *png.size)
