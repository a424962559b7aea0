"""myKakuritsu (METHODS.md section 1): gated heads on a backbone, and the eval matrix.

    backbone <- kakuritsu.backbone: a converted torchvision checkpoint
                (python -m neurojax.convert.torchvision) or a neurojax
                workdir; or, with kakuritsu.pretrain.epochs > 0, config.model
                trained here first (<workdir>/backbone, on the schedule
                kakuritsu.pretrain.schedule); or random (with
                kakuritsu.train_backbone: the whole network from scratch;
                or kakuritsu.backbone="random", to time the step)
    for head in kakuritsu.heads (K, D, W):
        train it on the backbone (frozen unless train_backbone), in
        <workdir>/heads/<head>: a supervised run, resumable on its own
    for every head x eval mode (its own gate, switch, Kakuritsu p, Dropout):
        Acc1 and Acc5 on the eval split
    -> a table, <workdir>/results.json and <workdir>/eval_matrix.png

The heads (nn.gating.GatedHead, on the pooled features):
    K: Kakuritsu(in->hidden, p) -> ReLU -> Kakuritsu(hidden->classes, p), U(-0.1, 0.1)
    D: Linear -> Dropout -> ReLU -> Linear -> Dropout (bias-free; on the logits too)
    W: Linear -> ReLU -> Linear (bias-free)
Eval modes: "own" is the head's training gate (K: Kakuritsu p, D: dropout
on, W: none), "switch" is the plain deterministic head (p=1, dropout off),
"kakuritsu" gates any head at `eval_p` and "dropout" applies dropout
`eval_dropout`. The random modes draw their gates from
fold_in(seed, batch, mode), the same for every head, so heads are compared
on the same draws. Every head trains on the same batches in the same order.
"""

from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from neurojax import models, parallel, rng
from neurojax.methods import supervised
from neurojax.nn import gating
from neurojax.nn.gating import Gate, OnBackbone
from neurojax.train import report
from neurojax.train import workdir as workdir_lib
from neurojax.train import steps as steps_lib
from neurojax.train import init_from
from neurojax.train.experiment import check_or_save_config, load_run

HEADS = ("K", "D", "W")
MODES = ("own", "switch", "kakuritsu", "dropout")
# Changing these on a finished run re-evaluates its heads, never retrains them.
RESUME_SAFE = ("kakuritsu.eval_p", "kakuritsu.eval_dropout")


class BackboneError(ValueError):
  """A backbone checkpoint that does not fit config.model (names the key)."""


def config() -> ml_collections.ConfigDict:
  """`config.kakuritsu`: method="kakuritsu", gated heads (K, D, W) on a
  backbone, and the eval matrix."""
  from neurojax.config import schedule_config  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      backbone="",                  # a converted torchvision checkpoint, a workdir, or "random"
      pretrain=dict(                # train config.model here first, as the backbone
          epochs=0.0,               # > 0: pretrain, with config.optimizer and this schedule
          schedule=schedule_config()),
      train_backbone=False,         # True: train the whole network (from scratch, or fine-tune)
      backbone_bn="batch",          # batch (the original: BN in train mode) | running
      heads=("K", "D", "W"),
      hidden=1000,                  # the heads' hidden width
      p=0.5,                        # K's keep probability
      dropout=0.5,                  # D's dropout rate
      eval_p=0.5,                   # the "kakuritsu" eval mode's keep probability
      eval_dropout=0.5,             # the "dropout" eval mode's rate
      gate_impl="xla"))             # how K's gates are computed: xla | pallas (GPU/TPU kernel)


def validate(config) -> None:
  from neurojax import config as config_lib  # pylint: disable=g-import-not-at-top
  k = config.kakuritsu
  if not k.heads or any(h not in HEADS for h in k.heads):
    raise ValueError(f"config.kakuritsu.heads={tuple(k.heads)} must be a non-empty subset of "
                     f"{HEADS}")
  if k.backbone_bn not in OnBackbone.BACKBONE_BN:
    raise ValueError(f"config.kakuritsu.backbone_bn={k.backbone_bn!r} is not valid; choose one "
                     f"of: {', '.join(OnBackbone.BACKBONE_BN)}")
  for field in ("p", "eval_p"):
    if not 0.0 < k[field] <= 1.0:
      raise ValueError(f"config.kakuritsu.{field}={k[field]} must be in (0, 1]: the probability "
                       "of keeping a synapse (the original used 0.5)")
  for field in ("dropout", "eval_dropout"):
    if not 0.0 <= k[field] < 1.0:
      raise ValueError(f"config.kakuritsu.{field}={k[field]} must be in [0, 1)")
  if k.hidden < 1:
    raise ValueError(f"config.kakuritsu.hidden={k.hidden} must be >= 1")
  if k.gate_impl not in gating.IMPLS:
    raise ValueError(f"config.kakuritsu.gate_impl={k.gate_impl!r} is not valid; choose one of: "
                     f"{', '.join(gating.IMPLS)}")
  config_lib.check_number(config, "kakuritsu.pretrain.epochs", 0,
                          hint=" (0: no pretraining)")
  config_lib.validate_schedule(config, "kakuritsu.pretrain.schedule")
  if k.backbone and k.pretrain.epochs:
    raise ValueError("set config.kakuritsu.backbone (a checkpoint to start from) or "
                     "config.kakuritsu.pretrain.epochs (train the backbone here first), not both")
  if not (k.backbone or k.pretrain.epochs or k.train_backbone):
    raise ValueError("the heads would train on a random frozen backbone: set "
                     "config.kakuritsu.backbone (a converted checkpoint or a workdir; 'random' "
                     "if you mean it, e.g. to time the step), config.kakuritsu.pretrain.epochs, "
                     "or config.kakuritsu.train_backbone=True (the whole network from scratch)")
  if not models.is_backbone(config.model.name):
    raise ValueError(f"config.model.name={config.model.name!r} cannot be a backbone; choose "
                     f"one of: {', '.join(n for n in models.names() if models.is_backbone(n))}")


def backbone_spec(config) -> dict:
  """config.model without its classifier (num_classes=0: pooled features)."""
  return models.spec(config.model.name, num_classes=0, dtype=config.compute_dtype,
                     **{n: v for n, v in config.model.items() if n != "name"})


def head_gates(k) -> dict[str, Gate]:
  """The training gate of each head."""
  return {"K": Gate("kakuritsu", k.p), "D": Gate("dropout", rate=k.dropout), "W": Gate("none")}


def eval_gates(k, head: str) -> dict[str, Gate]:
  """The eval modes of `head`, by name."""
  return {"own": head_gates(k)[head], "switch": Gate("none"),
          "kakuritsu": Gate("kakuritsu", k.eval_p), "dropout": Gate("dropout", rate=k.eval_dropout)}


def head_spec(config, head: str, num_classes: int) -> dict:
  """The model spec of `head` on the backbone (`models.heads.on_backbone`):
  a head's checkpoint stores it, so `load_run` rebuilds the head's model."""
  k = config.kakuritsu
  gate = head_gates(k)[head]
  return models.spec("on_backbone", num_classes=num_classes, dtype=config.compute_dtype,
                     backbone=backbone_spec(config), hidden=k.hidden,
                     weight_init="kakuritsu" if head == "K" else "torch",
                     gate=(gate.kind, gate.p, gate.rate), freeze_backbone=not k.train_backbone,
                     backbone_bn=k.backbone_bn, gate_impl=k.gate_impl)


def head_model(config, head: str, num_classes: int) -> OnBackbone:
  return models.build(head_spec(config, head, num_classes))


def load_backbone(directory: str, config) -> dict:
  """{"params", "batch_stats"} of a backbone without its fc, from a converted
  torchvision checkpoint or a neurojax workdir."""
  if not os.path.isdir(directory):
    raise BackboneError(f"config.kakuritsu.backbone={directory!r} is not a directory; give a "
                        "converted checkpoint (python -m neurojax.convert.torchvision --out DIR) "
                        "or a neurojax workdir")
  if os.path.exists(os.path.join(directory, "meta.json")):
    from neurojax.convert.torchvision import load  # pylint: disable=g-import-not-at-top
    variables, meta = load(directory)
    if meta["arch"] != config.model.name:
      raise BackboneError(f"{directory} holds a {meta['arch']}, but config.model.name="
                          f"{config.model.name!r}; set --config.model.name={meta['arch']}")
  elif os.path.exists(os.path.join(directory, "config.json")):
    saved, _, state = load_run(directory)
    if saved.model.name != config.model.name:
      raise BackboneError(f"{directory} trained a {saved.model.name}, but config.model.name="
                          f"{config.model.name!r}; set --config.model.name={saved.model.name}")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
  else:
    raise BackboneError(f"{directory} is neither a converted checkpoint (no meta.json) nor a "
                        "neurojax workdir (no config.json)")
  # On the host: every head's state gets its own device copy (train steps donate them).
  return jax.device_get({c: {n: v for n, v in tree.items() if n != "fc"}
                         for c, tree in variables.items()})


def with_backbone(state, variables: dict, source: str):
  """`state` with its "backbone" params and BN statistics from `variables`
  (checked leaf by leaf: a missing, unexpected or misshapen one is an error
  that names it)."""
  params, stats = dict(state.params), dict(state.batch_stats)
  for collection, target in (("params", params), ("batch_stats", stats)):
    init_from.check_fit(init_from.shapes(target["backbone"], f"{collection}/"),
                        init_from.shapes(variables.get(collection, {}), f"{collection}/"),
                        source, "is config.model.name, stem or width right?", BackboneError)
    target["backbone"] = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype),
                                      variables[collection], target["backbone"])
  return state.replace(params=params, batch_stats=stats)


def _pretrain(config, workdir: str) -> str:
  """Trains config.model (with its classifier) in <workdir>/backbone."""
  k = config.kakuritsu
  pre = copy.deepcopy(config)
  with pre.unlocked():
    pre.method = "supervised"
    pre.num_steps = 0
    pre.num_epochs = float(k.pretrain.epochs)
    pre.schedule = copy.deepcopy(k.pretrain.schedule)
    pre.optimizer.freeze = ""
  directory = os.path.join(workdir, "backbone")
  print(f"\n== backbone: {config.model.name}, {k.pretrain.epochs:g} epochs, in {directory}")
  supervised.train(pre, directory, resume_safe=RESUME_SAFE)
  return directory


def _head_config(config, head: str):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.optimizer.freeze = "" if config.kakuritsu.train_backbone else "^backbone/"
    c.kakuritsu.heads = (head,)
  return c


def eval_matrix(model: OnBackbone, state, data, mesh, gates: dict[str, Gate], seed: int) -> dict:
  """{mode: {"top1", "top5", "loss"}} over the eval split, on the shared
  evaluator: the backbone runs once per batch (BN running statistics), then
  the head under every gate, gate i drawing from fold_in(batch key, i)."""
  def predict(variables, images, key):
    features = model.apply(variables, images, method="features")
    out = {}
    for i, (name, gate) in enumerate(gates.items()):
      k = jax.random.fold_in(key, i)
      out[name] = model.apply({"params": variables["params"]}, features, gate,
                              method="classify", rngs={"gate": k, "dropout": k})
    return out

  step = steps_lib.jit_eval_step(steps_lib.eval_step_fn(model, predict=predict), mesh)
  return steps_lib.evaluate(step, state, data.eval.batches(), mesh,
                            rng.purpose_key(seed, rng.EVAL_MATRIX))


def _cached(path: str, step: int, modes: dict) -> dict | None:
  """A head's eval matrix saved by an earlier run, if it is for this step and
  these modes (changing eval_p or eval_dropout re-evaluates, never retrains)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  return saved["eval"] if saved["step"] == step and saved["modes"] == modes else None


def run(config, workdir: str) -> dict:
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  # The heads' runs lock their own workdirs; this one holds the whole run's.
  lock = workdir_lib.acquire(workdir) if parallel.is_main_process() else None
  try:
    return _run(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir: str) -> dict:
  from neurojax.data import build_data  # pylint: disable=g-import-not-at-top
  k = config.kakuritsu
  check_or_save_config(config, workdir, RESUME_SAFE)
  source = _pretrain(config, workdir) if k.pretrain.epochs else k.backbone
  initial = None
  if source and source != "random":
    variables = load_backbone(source, config)
    initial = lambda state: with_backbone(state, variables, source)  # noqa: E731
  data = build_data(config)
  mesh = parallel.make_mesh()
  matrix = {}
  for head in k.heads:
    print(f"\n== head {head} ({head_gates(k)[head]}) on "
          f"{'a trainable' if k.train_backbone else 'a frozen'} {config.model.name}")
    spec = head_spec(config, head, data.info.num_classes)
    model = models.build(spec)
    trained, state = supervised.train(_head_config(config, head),
                                      os.path.join(workdir, "heads", head), data=data,
                                      model_spec=spec, initial=initial, resume_safe=RESUME_SAFE)
    gates = eval_gates(k, head)
    modes = {name: str(g) for name, g in gates.items()}
    cache = os.path.join(workdir, "heads", head, "eval_matrix.json")
    evaluated = _cached(cache, int(state.step), modes)
    if evaluated is None:
      evaluated = eval_matrix(model, state, data, mesh, gates, config.seed)
      if parallel.is_main_process():
        with open(cache, "w") as f:
          json.dump({"step": int(state.step), "modes": modes, "eval": evaluated}, f, indent=1)
    matrix[head] = {"trained_with": str(head_gates(k)[head]),
                    "images_per_sec": trained.get("images_per_sec"),
                    "eval": evaluated, "modes": modes}
    logging.info("head %s: %s", head, evaluated)
  if not parallel.is_main_process():
    return {}
  return _report(config, workdir, matrix)


def robustness(matrix: dict) -> dict | None:
  """K evaluated with its gates on, minus W evaluated with Kakuritsu gates
  (the original's "+7.5 Acc1, +1.6 Acc5"), or None without both heads."""
  if "K" not in matrix or "W" not in matrix:
    return None
  k, w = matrix["K"]["eval"]["own"], matrix["W"]["eval"]["kakuritsu"]
  return {"top1": k["top1"] - w["top1"], "top5": k["top5"] - w["top5"]}


def matrix_rows(matrix: dict) -> list[dict]:
  """One table row per head: Acc1/Acc5 (%) under every eval mode."""
  rows = []
  for head, entry in matrix.items():
    row = {"head": head, "trained with": entry["trained_with"]}
    for mode in MODES:
      m = entry["eval"][mode]
      row[mode] = f"{100 * m['top1']:.2f} / {100 * m['top5']:.2f}"
    rows.append(row)
  return rows


def _report(config, workdir: str, matrix: dict) -> dict:
  k = config.kakuritsu
  speeds = {h: e["images_per_sec"] for h, e in matrix.items() if e["images_per_sec"]}
  results = {"model": config.model.name, "backbone": k.backbone or ("pretrained here" if
                                                                   k.pretrain.epochs else "random"),
             "train_backbone": k.train_backbone, "backbone_bn": k.backbone_bn,
             "heads": matrix, "robustness": robustness(matrix),
             "step_time_vs_W": ({h: speeds["W"] / s for h, s in speeds.items()}
                                if "W" in speeds else None)}
  lines = []
  if results["robustness"]:
    r = results["robustness"]
    lines.append(f"K at p={k.p:g} minus W under Kakuritsu p={k.eval_p:g}: "
                 f"{100 * r['top1']:+.2f} Acc1, {100 * r['top5']:+.2f} Acc5")
  if results["step_time_vs_W"]:
    lines.append("train step time relative to W: " + ", ".join(
        f"{h} {t:.2f}x" for h, t in results["step_time_vs_W"].items()))
  from neurojax.plots import plot_eval_matrix  # pylint: disable=g-import-not-at-top
  rows = matrix_rows(matrix)
  return report.write(
      workdir, "kakuritsu", results,
      title=(f"Eval matrix, Acc1 / Acc5 (%), {config.model.name}, workdir {workdir}; modes: "
             f"switch = p=1 and no dropout, kakuritsu = p={k.eval_p:g}, "
             f"dropout = {k.eval_dropout:g}"),
      rows=rows, lines=lines,
      plot=lambda: plot_eval_matrix({h: {m: e["eval"][m] for m in MODES}
                                     for h, e in matrix.items()},
                                    os.path.join(workdir, "eval_matrix.png"),
                                    title=f"{config.model.name}: heads x eval modes"))
