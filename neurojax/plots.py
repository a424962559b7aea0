"""PNG plots of runs (matplotlib, no display).

Compare prune runs, or generational runs (DNR, KE, ...), averaging the seeds
of each model and method:

    python -m neurojax.plots --out pruning.png runs/prune300_s0 runs/prune300_s1 runs/prune5
    python -m neurojax.plots --out generations.png runs/dnr_s0 runs/dnr_s1 runs/ke_s0 ...
    python -m neurojax.plots --out eval_matrix.png runs/kakuritsu_s0 runs/kakuritsu_s1 ...

Kakuritsu runs give the eval matrix (heads x eval modes) averaged over seeds;
plain supervised runs give each model's final and best-epoch test top-1 and
its test curve, seeds averaged:

    python -m neurojax.plots --out dit.png runs/dit/resnet20_fmnist_s* runs/dit/dit_resnet20_fmnist_s*
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from neurojax.train.writers import read_metrics


def _pyplot():
  """matplotlib.pyplot on the Agg backend (no display), imported on first use."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def plot_training_curves(workdir: str, path: str | None = None) -> str:
  """Train loss, and train/eval top-1, against epoch; returns the PNG's path."""
  plt = _pyplot()

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
  return _save(fig, path or os.path.join(workdir, "curves.png"))


def plot_accuracy_vs_sparsity(curves: dict[str, list[dict]], path: str,
                              title: str = "test top-1 against fraction pruned") -> str:
  """One curve per label (e.g. "lenet_300_100 magnitude/global"); each is the
  `rounds` list of a prune run's results.json (sparsity, compression, top1,
  and optionally top1_std, drawn as error bars)."""
  plt = _pyplot()

  fig, ax = plt.subplots(figsize=(6.4 + (2.6 if len(curves) > 2 else 0), 4.2))
  most = 1.0
  for label, rounds in curves.items():
    xs = [1.0 / max(1.0 - r["sparsity"], 1e-9) for r in rounds]       # compression
    most = max(most, *xs)
    ys = [100 * r["top1"] for r in rounds]
    errs = [100 * r.get("top1_std", 0.0) for r in rounds]
    ax.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt="o-", capsize=3, label=label)
  # A log axis of compression 1/(1 - pruned), labelled with the fraction pruned.
  ax.set_xscale("log")
  ticks = [t for t in (1, 2, 4, 8, 12, 17, 25, 50, 100) if t <= 1.5 * most]
  ax.set_xticks(ticks, [f"{100 * (1 - 1 / t):.0f}%\n{t}x" for t in ticks])
  ax.minorticks_off()
  ax.set(xlabel="weights pruned (%) / compression", ylabel="test top-1 (%)", title=title)
  ax.grid(alpha=0.3)
  if len(curves) > 2:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
  else:
    ax.legend()
  return _save(fig, path)


def plot_generations(rows: list[dict], path: str, title: str = "") -> str:
  """Test top-1 at the end of each generation, and the weights reset and
  the mask overlap with the previous generation at its start."""
  plt = _pyplot()

  fig, (ax_acc, ax_reset) = plt.subplots(1, 2, figsize=(10, 3.8))
  gens = [r["generation"] for r in rows if r["top1"] is not None]
  ax_acc.plot(gens, [100 * r["top1"] for r in rows if r["top1"] is not None], "o-")
  ax_acc.set(xlabel="generation", ylabel="test top-1 (%)", title="end of each generation")
  ax_reset.bar([r["generation"] for r in rows], [r["reset"] for r in rows], color="tab:orange")
  ax_reset.set(xlabel="generation", ylabel="weights reset", title="reset at the start")
  overlaps = [(r["generation"], r["overlap"]) for r in rows if r.get("overlap") is not None]
  if overlaps:
    twin = ax_reset.twinx()
    twin.plot(*zip(*overlaps), "s--", color="tab:green")
    twin.set(ylabel="kept-set overlap with previous", ylim=(0, 1.05))
  for ax in (ax_acc, ax_reset):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  fig.suptitle(title)
  return _save(fig, path)


def pruning_curves(workdirs: list[str]) -> dict[str, list[dict]]:
  """The rounds of several prune runs, grouped by model and method; runs in
  a group (e.g. seeds) must share targets, and their rounds are averaged
  (top1 is the mean, top1_std the sample std over runs)."""
  groups: dict[str, list[dict]] = {}
  for workdir in workdirs:
    results = _results(workdir, "rounds", "prune")
    label = f"{results['model']} {results['score']}/{results['selection']}"
    if len(results["rounds"]) == 2:
      label += " one-shot"
    groups.setdefault(label, []).append(results)
  curves = {}
  for label, runs in groups.items():
    targets = [[r["target"] for r in run["rounds"]] for run in runs]
    if any(t != targets[0] for t in targets):
      raise ValueError(f"the {label} runs prune to different targets {targets}; "
                       "compare runs of one schedule")
    curve = []
    for i, first in enumerate(runs[0]["rounds"]):
      mean, std = _mean_std([run["rounds"][i]["top1"] for run in runs])
      curve.append({**first, "top1": mean, "top1_std": std, "runs": len(runs)})
    curves[f"{label} (n={len(runs)})" if len(runs) > 1 else label] = curve
  return curves


def _results(workdir: str, key: str, kind: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished {kind} run?")
  with open(path) as f:
    results = json.load(f)
  if key not in results:
    raise ValueError(f"{path} is not from a {kind} run (it has no {key!r})")
  return results


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def generation_summary(workdirs: list[str], labels: dict[str, str] | None = None) -> list[dict]:
  """Generational runs grouped by model, policy, re-draw and length (or by
  `labels[workdir]`), seeds averaged: one row per method with the final
  test top-1 (mean, sample std, runs, and `per_run` in the workdirs' order)
  and its per-generation curve (`epochs`, `top1`, `top1_std` lists)."""
  groups: dict[str, list[dict]] = {}
  for workdir in workdirs:
    r = _results(workdir, "generations", "generational")
    gens, epochs = len(r["generations"]), r["epochs_per_generation"]
    method = r["policy"] if r["policy"] != "none" else f"one generation of {epochs:g} epochs"
    if r.get("redraw"):
      method += f", {r['redraw']} re-draw"
    groups.setdefault((labels or {}).get(workdir, f"{r['model']} {method}"), []).append(r)
  rows = []
  for label, runs in groups.items():
    shapes = {(len(r["generations"]), r["epochs_per_generation"]) for r in runs}
    if len(shapes) > 1:
      raise ValueError(f"the {label} runs have different lengths {sorted(shapes)}; "
                       "compare runs of one schedule")
    gens, epochs = shapes.pop()
    per_gen = [_mean_std([run["generations"][g]["top1"] for run in runs]) for g in range(gens)]
    mean, std = per_gen[-1]
    rows.append({"method": label, "runs": len(runs), "epochs": round(gens * epochs),
                 "top1": mean, "top1_std": std, "per_run": [run["generations"][-1]["top1"] for run in runs],
                 "curve_epochs": [(g + 1) * epochs for g in range(gens)],
                 "curve_top1": [m for m, _ in per_gen], "curve_std": [s for _, s in per_gen]})
  return rows


def supervised_summary(workdirs: list[str], labels: dict[str, str] | None = None) -> list[dict]:
  """Supervised runs grouped by model (or by `labels[workdir]`), seeds
  averaged: the final test top-1
  and, labelled apart, the best epoch's (the best over the evals of each
  run; the mean of those maxima), as mean and sample std; the test top-1
  curve (`curve_epochs`, `curve_top1`, `curve_std`) and the training speed."""
  groups: dict[str, list[dict]] = {}
  for workdir in workdirs:
    r = _results(workdir, "evals", "supervised")
    if any(k in r for k in ("rounds", "generations", "heads")):
      raise ValueError(f"{workdir} is not a plain supervised run")
    groups.setdefault((labels or {}).get(workdir, r["model"]), []).append(r)
  rows = []
  for model, runs in groups.items():
    epochs = [[round(e["epoch"], 3) for e in run["evals"]] for run in runs]
    if any(e != epochs[0] for e in epochs):
      raise ValueError(f"the {model} runs were evaluated at different epochs; compare runs "
                       "of one schedule")
    best = [max(run["evals"], key=lambda e: e["top1"]) for run in runs]
    curve = [_mean_std([run["evals"][i]["top1"] for run in runs]) for i in range(len(epochs[0]))]
    final, final_std = _mean_std([run["final"]["top1"] for run in runs])
    best_top1, best_std = _mean_std([b["top1"] for b in best])
    rows.append({"model": model, "runs": len(runs), "epochs": epochs[0][-1],
                 "finals": [run["final"]["top1"] for run in runs],
                 "final_top1": final, "final_std": final_std,
                 "best_top1": best_top1, "best_std": best_std,
                 "best_epochs": [b["epoch"] for b in best],
                 "images_per_sec": float(np.median([r["images_per_sec"] for r in runs])),
                 "curve_epochs": epochs[0], "curve_top1": [m for m, _ in curve],
                 "curve_std": [sd for _, sd in curve]})
  return rows


def plot_supervised_summary(rows: list[dict], path: str, title: str = "") -> str:
  """Left: test top-1 against epoch, one curve per model (seeds' mean, a
  band of one sample std). Right: each run's final test top-1, with the
  models' mean ± std."""
  plt = _pyplot()

  fig, (ax, ax_final) = plt.subplots(1, 2, figsize=(11, 4.2),
                                     gridspec_kw={"width_ratios": [2, 1]})
  for i, row in enumerate(rows):
    mean, std = 100 * np.asarray(row["curve_top1"]), 100 * np.asarray(row["curve_std"])
    line, = ax.plot(row["curve_epochs"], mean, marker="o", ms=3,
                    label=f"{row['model']} (n={row['runs']})")
    ax.fill_between(row["curve_epochs"], mean - std, mean + std, color=line.get_color(),
                    alpha=0.2)
    finals = 100 * np.asarray(row["finals"])
    ax_final.plot(np.full(len(finals), i) + np.linspace(-0.12, 0.12, len(finals)), finals, "o",
                  color=line.get_color(), alpha=0.6)
    ax_final.errorbar([i + 0.3], [100 * row["final_top1"]], yerr=[100 * row["final_std"]],
                      fmt="s", color=line.get_color(), capsize=4)
    ax_final.annotate(f"{100 * row['final_top1']:.2f}", (i + 0.36, 100 * row["final_top1"]),
                      fontsize=8, va="center")
  ax.set(xlabel="epoch", ylabel="test top-1 (%)",
         title=title or "test top-1 (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  ax_final.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=15, fontsize=8)
  ax_final.set_xlim(-0.5, len(rows) - 0.2)
  ax_final.set(ylabel="final test top-1 (%)", title="final epoch: runs, mean ± std")
  ax_final.grid(alpha=0.3, axis="y")
  return _save(fig, path)


def plot_generation_summary(rows: list[dict], path: str) -> str:
  """Test top-1 against epochs trained, one curve per method (a point at the
  end of each generation, seeds' mean with sample-std bars)."""
  plt = _pyplot()

  fig, ax = plt.subplots(figsize=(10, 4.2))
  for row in rows:
    ax.errorbar(row["curve_epochs"], 100 * np.asarray(row["curve_top1"]),
                yerr=100 * np.asarray(row["curve_std"]), marker="o", capsize=3,
                label=f"{row['method']} (n={row['runs']})")
  ax.set(xlabel="epochs trained (generation ends)", ylabel="test top-1 (%)",
         title="test top-1 at the end of each generation (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return _save(fig, path)


def eval_matrix_summary(workdirs: list[str]) -> dict:
  """The eval matrices of kakuritsu runs (seeds), averaged: {head: {mode:
  {"top1", "top1_std", "top5", "top5_std"}}} (fractions; sample std)."""
  runs = [_results(w, "heads", "kakuritsu") for w in workdirs]
  order = ("own", "switch", "kakuritsu", "dropout")      # the table's, then any others
  layout = {h: sorted(e["eval"], key=lambda m: (order + (m,)).index(m))
            for h, e in runs[0]["heads"].items()}
  for w, r in zip(workdirs, runs):
    if {h: sorted(e["eval"]) for h, e in r["heads"].items()} != {
        h: sorted(m) for h, m in layout.items()}:
      raise ValueError(f"{w} has other heads or eval modes than {workdirs[0]}")
  summary = {}
  for head, modes in layout.items():
    summary[head] = {}
    for mode in modes:
      entry = {}
      for metric in ("top1", "top5"):
        mean, std = _mean_std([r["heads"][head]["eval"][mode][metric] for r in runs])
        entry.update({metric: mean, f"{metric}_std": std})
      summary[head][mode] = entry
  if all(r.get("robustness") for r in runs):
    summary["robustness"] = {}
    for metric in ("top1", "top5"):
      mean, std = _mean_std([r["robustness"][metric] for r in runs])
      summary["robustness"].update({metric: mean, f"{metric}_std": std})
  return summary


def plot_eval_matrix(matrix: dict, path: str, title: str = "") -> str:
  """Grouped bars: Acc1 of every head (groups) under every eval mode (bars),
  with std error bars when `matrix` is a seeds' summary."""
  plt = _pyplot()
  heads = list(matrix)
  modes = list(matrix[heads[0]])
  width = 0.8 / len(modes)
  fig, ax = plt.subplots(figsize=(7.5, 4))
  for i, mode in enumerate(modes):
    x = np.arange(len(heads)) + (i - (len(modes) - 1) / 2) * width
    top1 = [100 * matrix[h][mode]["top1"] for h in heads]
    std = [100 * (matrix[h][mode].get("top1_std") or 0.0) for h in heads]
    bars = ax.bar(x, top1, width, yerr=std if any(std) else None, capsize=3, label=mode)
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
  ax.set_xticks(np.arange(len(heads)), [f"head {h}" for h in heads])
  ax.set(ylabel="eval Acc1 (%)", title=title or "heads x eval modes")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(title="eval mode", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return _save(fig, path)


def plot_rejuvenation(runs: dict[str, list[dict]], path: str) -> str:
  """Neural Rejuvenation runs (results.json dicts, by label; seeds in a
  list): utilisation per sparsify epoch until NR fired, and each layer's
  width before, alive at NR and after (the seeds' mean)."""
  plt = _pyplot()
  fig, (ax_u, ax_w) = plt.subplots(1, 2, figsize=(11, 3.8))
  for k, (label, results) in enumerate(runs.items()):
    color = f"C{k}"
    for i, r in enumerate(results):
      curve = r["utilisation"]
      ax_u.plot([c["epoch"] for c in curve], [c["utilisation"] for c in curve], ".-",
                color=color, alpha=0.8, label=label if i == 0 else None)
    ax_u.axhline(results[0]["target"], color=color, ls=":", lw=1)
    fired = [r["surgery"] for r in results if r.get("surgery")]
    if fired:
      x = np.arange(len(fired[0]["widths_before"]))
      mean = lambda key: np.mean([f[key] for f in fired], axis=0)
      width = 0.8 / len(runs)
      ax_w.bar(x + k * width, mean("widths_after"), width, color=color, alpha=0.35,
               label=f"{label}: after NR")
      ax_w.bar(x + k * width, mean("alive"), width, color=color, label=f"{label}: alive at NR")
      ax_w.plot(x + k * width, mean("widths_before"), "_", color="k", ms=12,
                label="before" if k == 0 else None)
  ax_u.set(xlabel="sparsify epoch", ylabel="utilisation (alive conv weights)",
           title="until NR fires (dotted: target)")
  ax_w.set(xlabel="layer (channel group)", ylabel="channels", title="widths")
  for ax in (ax_u, ax_w):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(fig, path)


def plot_reliability(diagrams: dict[str, dict], path: str) -> str:
  """Reliability diagrams side by side, one per label: the accuracy of each
  confidence bin against its mean confidence (bars; the diagonal is perfect
  calibration), the gap shaded, and the fraction of examples per bin. Each
  diagram is `reliability` of a results.json ({count, confidence, correct}
  sums per bin; several runs' summed)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(diagrams), figsize=(3.6 * len(diagrams), 3.8), squeeze=False)
  for ax, (label, bins) in zip(axes[0], diagrams.items()):
    count = np.asarray(bins["count"], float)
    n = len(count)
    edges = np.linspace(0, 1, n + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    safe = np.maximum(count, 1)
    acc, conf = np.asarray(bins["correct"]) / safe, np.asarray(bins["confidence"]) / safe
    used = count > 0
    ece = float(np.sum(np.abs(np.asarray(bins["correct"]) - np.asarray(bins["confidence"])))
                / max(count.sum(), 1))
    ax.bar(centres[used], acc[used], 1 / n, edgecolor="k", lw=0.5, color="C0", label="accuracy")
    ax.bar(centres[used], (conf - acc)[used], 1 / n, bottom=acc[used], color="C3", alpha=0.35,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    twin = ax.twinx()
    twin.plot(centres[used], count[used] / count.sum(), "o-", color="C2", ms=3, lw=1)
    twin.set_ylim(0, 1)
    twin.set_ylabel("fraction of examples", color="C2", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max softmax)", ylabel="accuracy",
           title=f"{label}\nECE {100 * ece:.2f}%")
    ax.legend(loc="upper left", fontsize=7)
  return _save(fig, path)


def rejuvenation_runs(workdirs: list[str]) -> dict[str, list[dict]]:
  """Finished NR runs' results by model (seeds in a list)."""
  runs: dict[str, list[dict]] = {}
  for workdir in workdirs:
    results = _results(workdir, "utilisation", "rejuvenation")
    runs.setdefault(results["model"], []).append(results)
  return runs


def _print_rejuvenation(workdirs, out):
  from neurojax.tables import format_table  # pylint: disable=g-import-not-at-top
  runs = rejuvenation_runs(workdirs)
  rows = []
  for label, results in runs.items():
    top1 = [100 * r["final"]["top1"] for r in results]
    fired = [r["surgery"] for r in results if r.get("surgery")]
    rows.append({"model": label, "runs": len(results), "fired": len(fired),
                 "sparsify_epochs": float(np.mean([r["sparsify_epochs"] for r in results])),
                 "params_after": int(np.mean([f["params_after"] for f in fired])) if fired
                 else None, "top1": float(np.mean(top1)),
                 "top1_std": float(np.std(top1, ddof=1)) if len(top1) > 1 else 0.0})
  print(format_table(rows, list(rows[0])))
  print("\nplot:", plot_rejuvenation(runs, out))


def run_method(workdir: str) -> str:
  """The method of a finished run, from its results.json (`method`; runs
  written before it was recorded: from the schema)."""
  results = _results(workdir, "model", "neurojax")
  if "method" in results:
    return results["method"]
  for key, method in (("heads", "kakuritsu"), ("generations", "generations"),
                      ("rounds", "prune")):
    if key in results:
      return method
  return "supervised"


def _print_eval_matrix(workdirs, out):
  from neurojax.tables import format_table  # pylint: disable=g-import-not-at-top
  summary = eval_matrix_summary(workdirs)
  gain = summary.pop("robustness", None)
  rows = [{"head": h, **{m: f"{100 * v['top1']:.2f} ± {100 * v['top1_std']:.2f} / "
                            f"{100 * v['top5']:.2f} ± {100 * v['top5_std']:.2f}"
                         for m, v in modes.items()}} for h, modes in summary.items()]
  print(f"Acc1 / Acc5 (%), mean ± std over {len(workdirs)} runs")
  print(format_table(rows, list(rows[0])))
  if gain:
    print(f"K with its gates minus W under Kakuritsu gates: {100 * gain['top1']:+.2f} ± "
          f"{100 * gain['top1_std']:.2f} Acc1, {100 * gain['top5']:+.2f} ± "
          f"{100 * gain['top5_std']:.2f} Acc5")
  print("\nplot:", plot_eval_matrix(summary, out, f"heads x eval modes, mean of {len(workdirs)} runs"))


def _print_supervised(workdirs, out):
  from neurojax.tables import format_table  # pylint: disable=g-import-not-at-top
  rows = supervised_summary(workdirs)
  print(format_table([{**r, "best_epochs": " ".join(f"{e:g}" for e in r["best_epochs"])}
                      for r in rows], ["model", "runs", "epochs", "final_top1", "final_std",
                                       "best_top1", "best_std", "best_epochs"]))
  print("\nplot:", plot_supervised_summary(rows, out))


def _print_generations(workdirs, out):
  from neurojax.tables import format_table  # pylint: disable=g-import-not-at-top
  rows = generation_summary(workdirs)
  print(format_table(rows, ["method", "runs", "epochs", "top1", "top1_std"]))
  print("\nplot:", plot_generation_summary(rows, out))


def _print_pruning(workdirs, out):
  from neurojax.tables import format_table  # pylint: disable=g-import-not-at-top
  curves = pruning_curves(workdirs)
  for label, rounds in curves.items():
    print(f"\n{label}")
    print(format_table(rounds, ["target", "sparsity", "compression", "top1", "top1_std"]))
  print("\nplot:", plot_accuracy_vs_sparsity(curves, out))


# results.json's `method` -> the summary that compares such runs.
SUMMARIES = {"supervised": _print_supervised, "prune": _print_pruning,
             "generations": _print_generations, "kakuritsu": _print_eval_matrix,
             "rejuvenation": _print_rejuvenation, "bayes": _print_supervised}


def main(argv: list[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m neurojax.plots",
                                   description="Compares finished runs of one method, seeds "
                                   "averaged: prune runs (accuracy against fraction pruned), "
                                   "generational runs (accuracy by generation), kakuritsu runs "
                                   "(the eval matrix) or plain supervised runs (final and best "
                                   "top-1 by model).")
  parser.add_argument("workdirs", nargs="+", help="workdirs of finished runs, all of one method")
  parser.add_argument("--out", required=True, help="the PNG to write")
  args = parser.parse_args(argv)
  try:
    kinds = {w: run_method(w) for w in args.workdirs}
    if len(set(kinds.values())) > 1:
      raise ValueError("give runs of one method; these are: " + ", ".join(
          f"{w} ({m})" for w, m in kinds.items()))
    method = next(iter(kinds.values()))
    if method not in SUMMARIES:
      raise ValueError(f"no summary for {method!r} runs; there is one for: "
                       f"{', '.join(SUMMARIES)}")
    SUMMARIES[method](args.workdirs, args.out)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"neurojax.plots: {e}")


if __name__ == "__main__":
  main(sys.argv[1:])
