"""PNG plots of a run, drawn from `<workdir>/metrics.jsonl` (matplotlib, no display)."""

from __future__ import annotations

import os

from neurojax.train.writers import read_metrics


def plot_training_curves(workdir: str, path: str | None = None) -> str:
  """Train loss, and train/eval top-1, against epoch; returns the PNG's path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = read_metrics(workdir)
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "eval/top1" in r]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax_loss.plot([r["step"] for r in train], [r["train/loss"] for r in train], lw=1)
  ax_loss.set(xlabel="step", ylabel="train loss", title="loss")
  ax_acc.plot([r["step"] for r in train], [100 * r["train/top1"] for r in train], lw=1,
              label="train (augmented)")
  ax_acc.plot([r["step"] for r in evals], [100 * r["eval/top1"] for r in evals], "o-",
              label="eval")
  if evals:
    best = evals[-1]
    ax_acc.annotate(f"{100 * best['eval/top1']:.2f}%", (best["step"], 100 * best["eval/top1"]),
                    textcoords="offset points", xytext=(-30, -15))
  ax_acc.set(xlabel="step", ylabel="top-1 (%)", title="accuracy")
  ax_acc.legend(loc="lower right")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  path = path or os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_accuracy_vs_sparsity(curves: dict[str, list[dict]], path: str,
                              title: str = "test top-1 against fraction pruned") -> str:
  """One curve per label (e.g. "lenet_300_100 magnitude/global"); each is the
  `rounds` list of a prune run's results.json (sparsity, compression, top1)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, rounds in curves.items():
    xs = [100 * r["sparsity"] for r in rounds]
    ys = [100 * r["top1"] for r in rounds]
    ax.plot(xs, ys, "o-", label=label)
    for r, x, y in zip(rounds, xs, ys):
      if r["compression"] and r["compression"] >= 2:
        ax.annotate(f"{r['compression']:.0f}x", (x, y), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
  ax.set(xlabel="weights pruned (%)", ylabel="test top-1 (%)", title=title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
