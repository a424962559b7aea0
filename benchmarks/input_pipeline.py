"""Input pipeline at ImageNet scale: JPEG decode + random-resized-crop + flip, per core.

Writes an array_record file of real JPEG bytes (and the same JPEGs as a
class-folder tree), then times six arms on them, side by side in one run:

  neurojax threads    `neurojax.data.pipeline.TrainData.batches()`, the
                      pipeline as it is today: grain threads in this process
                      (the config defaults num_threads=4, prefetch=2, so 2
                      threads), each computing whole batches.
  neurojax 1/2 procs  the same `TrainData.batch` through grain worker
                      processes: `grain.MapDataset.range(...).map(batch)
                      .to_iter_dataset(ReadOptions(num_threads=1))
                      .mp_prefetch(MultiprocessingOptions(num_workers=K))`.
  torchvision 0/1/2   `torchvision.datasets.ImageFolder` over the same JPEGs,
                      `RandomResizedCrop, RandomHorizontalFlip, ToTensor,
                      Normalize`, `torch.utils.data.DataLoader(num_workers=K)`.

Both sides decode with PIL (built with libjpeg-turbo; pillow-simd,
simplejpeg and PyTurboJPEG are not installed), crop-and-resize with PIL's
antialiased bilinear filter, flip, normalise with the ImageNet mean/std to
float32 and batch. The neurojax arms read the array_record file (a record
is msgpack {"image": JPEG bytes, "label": int}) through grain's
ArrayRecordDataSource; torchvision reads files. Both visit the same images
in the same order (the neurojax epoch permutation, handed to the
DataLoader as its sampler). torch runs with torch.set_num_threads(1), so
every worker process is one core's worth of work.

The images are synthetic photographs: sums of smoothly upsampled random
fields at four scales plus pixel noise (no downloads here), long side
uniform in [400, 560] px, short side 0.65-0.8 of it (about 500 x 375),
three in four landscape, JPEG quality 90.

Timing: each round opens every arm afresh (worker start-up is not timed),
takes 2 x workers + 2 untimed warm-up batches (about what its prefetch
buffers hold, so the timed batches are computed while timed), then times
`--batches` batches and closes the arm, so no idle arm's workers compute
during another's timing. The arm order reverses every other round. CPU
time (user + system) over the timed batches is summed over this process
(time.process_time) and all its children (psutil), so "images per
CPU-second" is the throughput of one fully busy core, whatever the threads
or processes. "cores busy" is that CPU time over the wall time. Figures are medians over rounds; a ratio is the median of the
per-round (paired) ratios.

Cores per TPU v4 chip = the chip's ResNet-50 training images/s divided by
the images per CPU-second. The chip figure is an assumption, not a
measurement: 275 TFLOP/s peak bf16 (Cloud TPU v4 docs) x 50% MFU /
24.0 GFLOP per 224 px training example (XLA's cost analysis of neurojax's
ResNet-50 step, benchmarks/comms.py) = 5,729 images/s. No published
per-chip MLPerf figure was at hand offline; `--chip-images-per-s`
overrides it.

Usage:
  .venv/bin/python benchmarks/input_pipeline.py                   # the README's table (~80 s on 2 cores)
  .venv/bin/python benchmarks/input_pipeline.py --json out.json   # also write the JSON
  .venv/bin/python benchmarks/input_pipeline.py --tiny            # 16 small images, 1 round: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import cloudpickle
import grain
import ml_collections
import msgpack
import numpy as np
import psutil
from array_record.python import array_record_module
from PIL import Image

from neurojax.data import augment
from neurojax.data import pipeline

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RECORDS = "images.array_record"
FOLDER = "folder"
CHIP_IMAGES_PER_S = 275e12 * 0.5 / 24.0e9  # the assumption above: 5,729

# grain's worker processes are spawned and unpickle the dataset, this
# module's JpegRecords included: when imported under another name (the
# test), ship the module by value, since the workers cannot import it.
if __name__ != "__main__":
  cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclasses.dataclass(frozen=True)
class Sizes:
  images: int
  long_side: tuple[int, int]
  crop: int
  batch: int
  classes: int
  batches: int  # timed per arm and round
  rounds: int


FULL = Sizes(images=256, long_side=(400, 560), crop=224, batch=32, classes=8, batches=12, rounds=3)
TINY = Sizes(images=16, long_side=(48, 64), crop=32, batch=4, classes=2, batches=2, rounds=1)


# ------------------------------------------------------------------ data


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: smooth random fields at four scales plus noise,
  which JPEG compresses about as much as a photograph (not a flat image)."""
  acc = np.zeros((height, width, 3), np.float32)
  for scale, weight in ((64, 0.45), (16, 0.25), (4, 0.2), (2, 0.1)):
    small = rng.integers(0, 256, (height // scale + 2, width // scale + 2, 3), dtype=np.uint8)
    up = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    acc += weight * np.asarray(up, np.float32)
  acc += rng.normal(0.0, 10.0, acc.shape).astype(np.float32)
  return np.clip(acc, 0, 255).astype(np.uint8)


def write_dataset(directory: str, sizes: Sizes, seed: int = 0) -> list[tuple[bytes, int]]:
  """Writes `sizes.images` JPEGs to directory/images.array_record (msgpack
  records) and to directory/folder/c{label:03d}/{i:06d}.jpg; returns the
  (JPEG bytes, label) written. Labels come in contiguous blocks, so
  ImageFolder's sorted order is the record order."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(os.path.join(directory, RECORDS), "group_size:1")
  written = []
  for i in range(sizes.images):
    long = int(rng.integers(sizes.long_side[0], sizes.long_side[1] + 1))
    short = int(round(long * rng.uniform(0.65, 0.8)))
    h, w = (short, long) if rng.random() < 0.75 else (long, short)
    buffer = io.BytesIO()
    Image.fromarray(synthetic_photo(rng, h, w)).save(buffer, "JPEG", quality=90)
    jpeg, label = buffer.getvalue(), i * sizes.classes // sizes.images
    writer.write(msgpack.packb({"image": jpeg, "label": label}))
    class_dir = os.path.join(directory, FOLDER, f"c{label:03d}")
    os.makedirs(class_dir, exist_ok=True)
    with open(os.path.join(class_dir, f"{i:06d}.jpg"), "wb") as f:
      f.write(jpeg)
    written.append((jpeg, label))
  writer.close()
  return written


def read_records(path: str) -> list[tuple[bytes, int]]:
  """All (JPEG bytes, label) of an array_record file, in order."""
  reader = array_record_module.ArrayRecordReader(path)
  records = [msgpack.unpackb(r) for r in reader.read_all()]
  reader.close()
  return [(r["image"], r["label"]) for r in records]


def decode(record: bytes) -> dict:
  d = msgpack.unpackb(record)
  image = np.asarray(Image.open(io.BytesIO(d["image"])).convert("RGB"))
  return {"image": image, "label": d["label"]}


class JpegRecords:
  """grain source over the array_record file: example i is the decoded
  uint8 [H, W, 3] image and its label (picklable, for grain's workers)."""

  def __init__(self, path: str):
    self._records = grain.sources.ArrayRecordDataSource(path)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict:
    return decode(self._records[i])

  def __getitems__(self, indices) -> list[dict]:
    return [decode(r) for r in self._records.__getitems__(list(indices))]


def neurojax_train_data(directory: str, sizes: Sizes, seed: int = 0) -> pipeline.TrainData:
  """neurojax's training view of the records: random_resized_crop to
  `sizes.crop`, flip, ImageNet normalisation (augment.make_train_transform)."""
  d = ml_collections.ConfigDict(dict(
      image_size=sizes.crop, random_resized_crop=True, flip=True, crop_padding=0,
      eval_resize=0, mean=MEAN, randaugment_ops=0, random_erasing=0.0))
  source = JpegRecords(os.path.join(directory, RECORDS))
  return pipeline.TrainData(
      source=source, indices=np.arange(len(source)), transform=augment.make_train_transform(d),
      random=augment.uses_rng(d), seed=seed, batch_size=sizes.batch,
      steps_per_epoch=len(source) // sizes.batch, mean=MEAN, std=STD)


# ------------------------------------------------------------------ arms


def neurojax_processes(train: pipeline.TrainData, steps: int, workers: int):
  """Iterator over train.batch(0..steps-1) computed by `workers` grain processes."""
  ds = grain.MapDataset.range(0, steps).map(train.batch)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))


def torchvision_loader(directory: str, sizes: Sizes, order: list[int], workers: int):
  """Iterator over torchvision batches of the JPEG folder in `order`."""
  import torch  # pylint: disable=g-import-not-at-top  (kept out of grain's workers)
  import torchvision  # pylint: disable=g-import-not-at-top
  from torchvision import transforms as T  # pylint: disable=g-import-not-at-top
  tf = T.Compose([T.RandomResizedCrop(sizes.crop), T.RandomHorizontalFlip(), T.ToTensor(),
                  T.Normalize(MEAN, STD)])
  ds = torchvision.datasets.ImageFolder(os.path.join(directory, FOLDER), transform=tf)
  assert [os.path.basename(p) for p, _ in ds.samples] == [f"{i:06d}.jpg" for i in range(len(ds))]
  loader = torch.utils.data.DataLoader(ds, batch_size=sizes.batch, sampler=order,
                                       num_workers=workers, drop_last=True)
  return iter(loader)


def batch_digest(batch) -> str:
  """sha1 of a neurojax batch's images and labels."""
  return hashlib.sha1(batch["image"].tobytes() + batch["label"].tobytes()).hexdigest()


def cpu_seconds() -> dict[int, float]:
  """user + system CPU seconds of this process (time.process_time, fine
  grained) and of each live descendant (psutil: clock ticks, 10 ms)."""
  me = psutil.Process()
  out = {me.pid: time.process_time()}
  for proc in me.children(recursive=True):
    try:
      t = proc.cpu_times()
      out[proc.pid] = t.user + t.system
    except psutil.Error:  # exited meanwhile
      pass
  return out


def time_arm(open_arm, warmup: int, batches: int, batch_size: int) -> dict:
  """Opens an arm, takes `warmup` untimed and `batches` timed batches, closes it."""
  it = open_arm()
  first = next(it)
  for _ in range(warmup - 1):
    next(it)
  c0, t0 = cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(it)
  wall, c1 = time.perf_counter() - t0, cpu_seconds()
  if hasattr(it, "close"):
    it.close()
  del it  # a DataLoader iterator shuts its workers down here
  cpu = sum(c1[pid] - c0.get(pid, 0.0) for pid in c1)
  images = batches * batch_size
  if isinstance(first, dict):
    shape, digest = list(first["image"].shape), batch_digest(first)
  else:
    shape, digest = list(first[0].shape), None
  return {"images_per_s": images / wall, "images_per_cpu_s": images / cpu,
          "cores_busy": cpu / wall, "shape": shape, "digest": digest}


def run(directory: str, sizes: Sizes, seed: int = 0) -> dict:
  """Times every arm `sizes.rounds` times, interleaved; returns the raw rounds."""
  import torch  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain's mp_prefetch reads its absl flags' defaults
    flags.FLAGS.mark_as_parsed()
  torch.set_num_threads(1)
  train = neurojax_train_data(directory, sizes, seed)
  warmup = {0: 2, 1: 4, 2: 6}  # 2 x workers + 2 batches
  steps = max(warmup.values()) + sizes.batches
  order = [int(i) for s in range(steps) for i in train.example_indices(s)]

  def tv(w):
    def open_arm():
      torch.manual_seed(seed)
      return torchvision_loader(directory, sizes, order, w)
    return open_arm

  arms = {  # name: (worker processes, warm-up batches, open)
      "neurojax threads": (0, warmup[0], lambda: train.batches(0)),
      "neurojax 1 proc": (1, warmup[1], lambda: neurojax_processes(train, steps, 1)),
      "neurojax 2 procs": (2, warmup[2], lambda: neurojax_processes(train, steps, 2)),
      "torchvision 0 workers": (0, warmup[0], tv(0)),
      "torchvision 1 worker": (1, warmup[1], tv(1)),
      "torchvision 2 workers": (2, warmup[2], tv(2)),
  }
  rounds = []
  for r in range(sizes.rounds):
    names = list(arms) if r % 2 == 0 else list(arms)[::-1]
    rounds.append({n: time_arm(arms[n][2], arms[n][1], sizes.batches, sizes.batch) for n in names})
  return {"rounds": rounds, "workers": {n: a[0] for n, a in arms.items()},
          "reference_digest": batch_digest(train.batch(0))}


PAIRS = (("neurojax threads", "torchvision 0 workers"), ("neurojax 1 proc", "torchvision 1 worker"),
         ("neurojax 2 procs", "torchvision 2 workers"))


def summarise(raw: dict, chip: float) -> dict:
  """Medians per arm, paired ratios, and the cores-per-chip figures."""
  rounds, arms = raw["rounds"], {}
  for name, workers in raw["workers"].items():
    med = {k: statistics.median(r[name][k] for r in rounds)
           for k in ("images_per_s", "images_per_cpu_s", "cores_busy")}
    arms[name] = {**med, "processes": max(1, workers), "worker_processes": workers,
                  "images_per_s_per_process": med["images_per_s"] / max(1, workers),
                  "cores_per_v4_chip": chip / med["images_per_cpu_s"],
                  "shape": rounds[0][name]["shape"], "digest": rounds[0][name]["digest"]}
  ratios = {f"{a} / {b}": {k: statistics.median(r[a][k] / r[b][k] for r in rounds)
                           for k in ("images_per_s", "images_per_cpu_s")} for a, b in PAIRS}
  return {"arms": arms, "ratios": ratios}


def table(summary: dict) -> str:
  rows = ["| arm | processes | images/s | images/s per process | cores busy | "
          "images per CPU-second | cores per v4 chip |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, a in summary["arms"].items():
    w = a["worker_processes"]
    procs = f"{w} worker{'s' if w > 1 else ''} + main" if w else "main"
    rows.append(f"| {name} | {procs} | {a['images_per_s']:.1f} | {a['images_per_s_per_process']:.1f}"
                f" | {a['cores_busy']:.2f} | {a['images_per_cpu_s']:.1f} | {a['cores_per_v4_chip']:.1f} |")
  rows += ["", "| neurojax / torchvision (paired, median) | images/s | images per CPU-second |",
           "|---|---:|---:|"]
  rows += [f"| {k} | {v['images_per_s']:.2f}x | {v['images_per_cpu_s']:.2f}x |"
           for k, v in summary["ratios"].items()]
  return "\n".join(rows)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true", help="16 small images, crop 32, 1 round (seconds)")
  p.add_argument("--dir", help="where to write the data (default: a temporary directory)")
  p.add_argument("--images", type=int, help=f"JPEGs to write (default {FULL.images})")
  p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL.rounds})")
  p.add_argument("--batches", type=int, help=f"timed batches per arm and round (default {FULL.batches})")
  p.add_argument("--batch", type=int, help=f"batch size (default {FULL.batch})")
  p.add_argument("--chip-images-per-s", type=float, default=CHIP_IMAGES_PER_S,
                 help="ResNet-50 training images/s of one TPU v4 chip (default: the"
                      f" assumption in the docstring, {CHIP_IMAGES_PER_S:,.0f})")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="also write the results here")
  args = p.parse_args(argv)
  sizes = TINY if args.tiny else FULL
  sizes = dataclasses.replace(sizes, **{k: getattr(args, k) for k in ("images", "rounds", "batches", "batch")
                                        if getattr(args, k) is not None})
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    directory = args.dir or tmp
    t0 = time.perf_counter()
    written = write_dataset(directory, sizes, args.seed)
    write_s = time.perf_counter() - t0
    raw = run(directory, sizes, args.seed)
  summary = summarise(raw, args.chip_images_per_s)
  nj = max((n for n in summary["arms"] if n.startswith("neurojax")),
           key=lambda n: summary["arms"][n]["images_per_cpu_s"])
  tv = max((n for n in summary["arms"] if n.startswith("torchvision")),
           key=lambda n: summary["arms"][n]["images_per_cpu_s"])
  result = {
      "mode": "tiny" if args.tiny else "full", "sizes": dataclasses.asdict(sizes),
      "environment": {"cpus": os.cpu_count(), "load_avg_before": load_before,
                      "load_avg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      "python": sys.version.split()[0], "pillow": Image.__version__,
                      "grain": grain.__version__, "torchvision": sys.modules["torchvision"].__version__},
      "data": {"jpeg_mean_bytes": float(np.mean([len(j) for j, _ in written])), "write_s": write_s},
      "chip_images_per_s": args.chip_images_per_s, **summary,
      "reference_digest": raw["reference_digest"], "rounds": raw["rounds"],
      "cores_per_v4_chip": {"neurojax": {"arm": nj, "cores": summary["arms"][nj]["cores_per_v4_chip"]},
                            "torchvision": {"arm": tv, "cores": summary["arms"][tv]["cores_per_v4_chip"]}},
  }
  result["table_markdown"] = table(summary)
  print(f"{sizes.images} JPEGs, mean {result['data']['jpeg_mean_bytes'] / 1e3:.0f} kB, crop {sizes.crop},"
        f" batch {sizes.batch}, {sizes.batches} timed batches x {sizes.rounds} rounds;"
        f" {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before,"
        f" {result['environment']['load_avg_after'][0]:.2f} after\n")
  print(result["table_markdown"])
  print(f"\nOne TPU v4 chip at {args.chip_images_per_s:,.0f} ResNet-50 training images/s (an assumption;"
        f" see --help) needs {summary['arms'][nj]['cores_per_v4_chip']:.1f} cores like these for"
        f" neurojax ({nj}, {summary['arms'][nj]['images_per_cpu_s']:.1f} images per CPU-second) and"
        f" {summary['arms'][tv]['cores_per_v4_chip']:.1f} for torchvision ({tv}).")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
