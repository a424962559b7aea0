"""Neural Rejuvenation (Qiao, Lin, Zhang and Yuille, CVPR 2019; the
NeuralRejuvenation-CVPR19 code): sparsify, find the dead neurons, give
their resources to new ones, and train old and new together.

    sparsify: train with lambda * sign(gamma) added to the gradients of the
              changeable BN scales, at the schedule's first lr (the original
              pushes the whole schedule back by one epoch per epoch spent here)
              after every epoch: utilisation u (below); ImageNet: lambda +=
              sparsity_growth when u fell by less than growth_threshold;
              stop when u <= target (or after max_sparsify_epochs)
    surgery:  r = sqrt(all / alive); every changeable layer gets int(alive * r)
              channels: the survivors copied, new ones drawn; the model, the
              optimizer (momentum 0, lambda 0) and the jitted steps are rebuilt
    train:    the split network (`nn.rejuvenation`) for num_epochs on
              config.schedule: loss CE(z_old) + CE(z_new), prediction z_old + z_new

The changeable layers are the model's channel groups (`models.channel_groups`:
NR's non-fixed convs); a ResNet also declares its residual stream as fixed
groups (`stream_groups`: NR's fixed convs, the stem, each branch's last conv
and the downsample convs), which are never sparsified or dead but which the
surgery widens by r too. A DenseNet declares its concatenated channels (the
stem's, each conv2's, the transitions') as groups its later layers read at
an offset (`ChannelGroup.concat_readers`): there an input axis holds several
groups, each laid out survivors first, then new channels. A channel is dead
if |gamma| < live_threshold * max |gamma| in its layer; a layer is dead if
max |gamma| < dead_layer_threshold or none of its inputs is alive; convs in
no group are never dead. A conv weight is alive iff its input and output
channels are; utilisation = alive conv weights / all conv weights (not the
classifier or BN), each conv weighted by its output H*W with `flops`.

Where this differs from the original code, on purpose:
- r = sqrt(all / alive) on every model: the original's DenseNet takes
  int(sqrt(...)), so nothing regrows when utilisation ends between 0.25
  and 1;
- a DenseNet's concatenated input is [old | new] per layer, where the
  original orders all old channels, then all new (a permutation of the
  same network);
- a layer left with no survivor gets one new channel (the original's
  `rejuvenate` returns None there and the block is dropped);
- the prediction counts the classifier bias once (the original adds it to
  both logit sets);
- lambda is 0 after the surgery (the original's ImageNet script may still
  add one growth step to the new optimizer in the epoch NR fires);
- if utilisation never reaches the target, the run stops sparsifying after
  max_sparsify_epochs, trains the unchanged model on the full schedule and
  says so (the original loops for ever);
- neural rescaling (`rescale` = t > 0, before the surgery) scales the next
  layer's inputs by c / t, also the classifier's (the original scales the
  classifier by c), so the function is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from neurojax import models, parallel, rng
from neurojax import sparsity as sp
from neurojax.nn import rejuvenation as split_nn
from neurojax.train import phases, report
from neurojax.train import steps as steps_lib
from neurojax.train.experiment import setup
from neurojax.train.optimizers import make_optimizer
from neurojax.train.writers import metrics_by_step
from neurojax.tree import path_str

_P = "params/"


def config() -> ml_collections.ConfigDict:
  """`config.rejuvenation`: method="rejuvenation" (Neural Rejuvenation)."""
  return ml_collections.ConfigDict(dict(
      sparsity=1.5e-4,              # lambda (the original's nr_sparsity; ImageNet: its start, 0)
      sparsity_growth=0.0,          # ImageNet 5e-5: lambda grows by this after an epoch in
      growth_threshold=0.01,        # which utilisation fell by less than this
      target=0.25,                  # NR fires at the first epoch end with utilisation <= this
      flops=False,                  # weight each conv by its output H*W (nr_flops)
      max_sparsify_epochs=100,      # give up sparsifying after this many epochs
      cross_attention=False,        # after NR: old/new cross terms (ImageNet True, CIFAR False)
      live_threshold=0.01,          # a channel is dead if |gamma| < this * max |gamma|
      dead_layer_threshold=1e-3,    # a layer is dead if max |gamma| < this
      rescale=0.0))                 # neural rescaling's t before the surgery (0: off)


def validate(config) -> None:
  from neurojax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.check_number(config, "rejuvenation.sparsity", 0)
  config_lib.check_number(config, "rejuvenation.sparsity_growth", 0)
  config_lib.check_number(config, "rejuvenation.growth_threshold", 0)
  config_lib.check_number(config, "rejuvenation.target", 0, 1, low_open=True, high_open=True,
                          hint=": the utilisation at which NR fires (CIFAR 0.25, ImageNet 0.5)")
  config_lib.check_number(config, "rejuvenation.max_sparsify_epochs", 1, integer=True)
  config_lib.check_number(config, "rejuvenation.live_threshold", 0, 1, low_open=True)
  config_lib.check_number(config, "rejuvenation.dead_layer_threshold", 0)
  config_lib.check_number(config, "rejuvenation.rescale", 0)
  _groups(config)


def _groups(config):
  model = models.get_model(config.model.name, num_classes=10,
                           **{k: v for k, v in config.model.items() if k != "name"})
  try:
    return model, models.all_channel_groups(config.model.name, model)
  except ValueError as e:
    raise ValueError(f"config.method='rejuvenation' changes the widths of the model's channel "
                     f"groups: {e}") from None


def check_model(config) -> None:
  """Refuses a model the surgery cannot widen (a JAX computation: call it
  after jax.distributed is up)."""
  model, groups = _groups(config)
  abstract = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, 32, 32, 3)),
                                                 train=False), jax.random.PRNGKey(0))
  Graph.of(abstract["params"], groups, config.model.name)


# --- the layers NR sees ---------------------------------------------------

Inputs = tuple[tuple[int, int], ...]     # (group, offset) per segment of an input axis


def _readers(group: models.ChannelGroup):
  """(path, axis, offset) of every leaf that holds the group's channels,
  the producer's outputs first."""
  return [(group.producer, -1, 0), *((p, a, 0) for p, a in group.followers),
          *group.concat_readers]


@dataclasses.dataclass(frozen=True)
class Conv:
  """A conv kernel ('/'-joined path in params), the channel groups its
  input axis holds ((group, offset) each; empty: the image or other
  unchangeable channels, all alive) and the group it writes (None: none)."""
  path: str
  inputs: Inputs
  out_group: int | None

  @property
  def module(self) -> str:
    return self.path.rsplit("/", 1)[0]


@dataclasses.dataclass(frozen=True)
class Graph:
  """The convs, the changeable groups (each with its BN scale) and the
  classifier that reads the last groups."""
  convs: tuple[Conv, ...]
  groups: tuple[models.ChannelGroup, ...]
  scales: tuple[str, ...]            # each group's BN scale, path in params
  head: tuple[str, Inputs] | None    # (classifier kernel path, the groups it reads)

  @classmethod
  def of(cls, params, groups, model_name: str = "") -> "Graph":
    flat = traverse_util.flatten_dict(params, sep="/")
    writes, reads, head, scales = {}, {}, {}, []
    for i, g in enumerate(groups):
      writes[g.producer[len(_P):]] = i
      scale = [p[len(_P):] for p, a in g.followers if p.startswith(_P) and p.endswith("/scale")]
      if not scale:
        raise ValueError(f"model {model_name!r}: channel group {g.producer} has no BatchNorm "
                         f"scale, which NR reads its dead neurons from")
      scales.append(scale[0])
      for p, axis, offset in _readers(g)[1:]:
        p = p[len(_P):]
        if not (p.endswith("kernel") and p in flat):
          continue
        if flat[p].ndim == 4 and axis == 2:
          reads.setdefault(p, []).append((i, offset))
        elif flat[p].ndim == 4 and axis in (3, -1):     # another writer of a fixed group
          writes[p] = i
        elif flat[p].ndim == 2 and axis == 0:
          head.setdefault(p, []).append((i, offset))
    width = lambda i: flat[groups[i].producer[len(_P):]].shape[-1]

    def inputs(path, segments, n_in) -> Inputs:
      segments = tuple(sorted(segments, key=lambda s: s[1]))
      at = 0
      for i, offset in segments:
        if offset != at:
          break
        at += width(i)
      if segments and at != n_in:
        gap = next((o for _, o in segments if o > at), n_in)
        raise ValueError(
            f"model {model_name!r}: channels [{at}, {gap}) of the input axis of {path} ({n_in} "
            f"channels) are in no channel group it reads; declare every channel it reads "
            f"(ChannelGroup.followers or concat_readers)")
      return segments
    convs = tuple(Conv(p, inputs(p, reads.get(p, ()), x.shape[2]), writes.get(p))
                  for p, x in flat.items() if p.endswith("kernel") and x.ndim == 4)
    for c in convs:
      if c.inputs and c.out_group is None:
        raise ValueError(
            f"model {model_name!r}: conv {c.path} reads changeable channels but writes fixed "
            f"ones it does not declare (e.g. into an undeclared concatenation), which NR would "
            f"also widen; declare its outputs as a channel group (`stream_groups`)")
    if len(head) > 1:
      raise ValueError(f"model {model_name!r}: channel groups are read by several dense "
                       f"layers ({', '.join(head)}); NR splits one classifier")
    head = next(((p, inputs(p, s, flat[p].shape[0])) for p, s in head.items()), None)
    return cls(convs, tuple(groups), tuple(scales), head)


def alive_channels(params, graph: Graph, live_threshold: float = 0.01,
                   dead_layer_threshold: float = 1e-3) -> list[np.ndarray]:
  """bool [C] per group: the channels NR keeps (host arrays)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  input_of = {c.out_group: c.inputs for c in graph.convs if c.out_group is not None}
  alive, visiting = {}, set()

  def of(i):             # in data-flow order: a group after the groups it reads
    if i in alive:
      return alive[i]
    gamma = np.abs(np.asarray(flat[graph.scales[i]], np.float32))
    if graph.groups[i].fixed:            # a residual stream: never dead
      alive[i] = np.ones(gamma.shape, bool)
      return alive[i]
    if i in visiting:
      raise ValueError(f"channel group {graph.groups[i].producer} reads its own channels "
                       f"through changeable groups only (a cycle)")
    visiting.add(i)
    # A fixed (stream) input is always alive; the image too (no inputs).
    sources = input_of.get(i, ())
    no_input = bool(sources) and not any(of(j).any() for j, _ in sources)
    top = gamma.max()
    keep = gamma >= live_threshold * top
    if top < dead_layer_threshold or no_input:
      keep[:] = False
    alive[i] = keep
    return keep
  return [of(i) for i in range(len(graph.groups))]


def _count(inputs: Inputs, alive) -> int:
  return sum(int(alive[i].sum()) for i, _ in inputs)


def utilisation(params, graph: Graph, alive, output_hw: dict | None = None):
  """(alive conv weights, all conv weights); with `output_hw` ({conv module
  path: H*W}), each conv weighted by its output size (FLOPs)."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  live = total = 0
  for c in graph.convs:
    kh, kw, n_in, n_out = flat[c.path].shape
    a_in = _count(c.inputs, alive) if c.inputs else n_in
    a_out = n_out if c.out_group is None else int(alive[c.out_group].sum())
    w = output_hw[c.module] if output_hw else 1
    live += kh * kw * a_in * a_out * w
    total += kh * kw * n_in * n_out * w
  return live, total


def output_hw(model, variables, image_shape) -> dict:
  """{module path: output H*W} of every conv."""
  return {k: int(np.prod(s[:-1])) for k, s in
          sp.stats.output_shapes(model, variables, image_shape).items() if len(s) == 3}


def next_strength(strength: float, previous: float | None, current: float, growth: float,
                  threshold: float) -> float:
  """The original ImageNet schedule: lambda grows by `growth` after an epoch
  in which utilisation fell by less than `threshold` (from `previous`, 1.0
  before the first epoch)."""
  if growth and previous is not None and previous - current < threshold:
    return strength + growth
  return strength


# --- the surgery ------------------------------------------------------------

def new_widths(alive, ratio: float) -> list[int]:
  """int(alive * r) per group, at least 1 (the original drops a layer with
  no survivor)."""
  return [max(1, int(int(a.sum()) * ratio)) for a in alive]


def _fresh(path: str, shape, normal: np.ndarray) -> np.ndarray:
  """A new entry's value: conv kernel N(0, 2 / (k*k*out)), classifier N(0,
  0.01), BN scale 0.5, BN bias / conv bias / running mean 0, running var 1.
  `normal` holds standard normal draws of `shape` (kernels only)."""
  leaf = path.rsplit("/", 1)[-1]
  if leaf == "kernel" and len(shape) == 4:
    return normal * math.sqrt(2.0 / (shape[0] * shape[1] * shape[-1]))
  if leaf == "kernel":
    return normal * 0.01
  return np.full(shape, {"scale": 0.5, "var": 1.0}.get(leaf, 0.0))


def _segments(graph: Graph, flat) -> dict:
  """{leaf path: {axis: [(offset, group), ...]}} of every leaf a group indexes."""
  axes = {}
  for i, g in enumerate(graph.groups):
    for p, axis, offset in _readers(g):
      if p in flat:
        axes.setdefault(p, {}).setdefault(axis % flat[p].ndim, []).append((offset, i))
  return {p: {a: sorted(s) for a, s in by_axis.items()} for p, by_axis in axes.items()}


def _axis_layout(segments, alive, widths):
  """On one axis after the surgery: each segment's survivors then its new
  channels. (the survivors' old indices, their new indices, bool old [new
  size], the new size)."""
  take, put, old, at = [], [], [], 0
  for offset, i in segments:
    kept = np.flatnonzero(alive[i])
    take.append(offset + kept)
    put.append(at + np.arange(len(kept)))
    old.append(np.arange(widths[i]) < len(kept))
    at += widths[i]
  return np.concatenate(take), np.concatenate(put), np.concatenate(old), at


def rejuvenate(variables, graph: Graph, alive, widths, key):
  """The widened variables: on every axis a group indexes, its survivors
  first (copied bit-exactly), then new entries (`_fresh`, kernels from one
  draw of `key`), segment by segment where an axis holds several groups (a
  concatenation); the cross blocks of a conv (new inputs -> old outputs,
  old inputs -> new outputs) are 0."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  layouts = {p: {a: _axis_layout(segs, alive, widths) for a, segs in by_axis.items()}
             for p, by_axis in _segments(graph, flat).items()}
  shapes = {}
  for path, by_axis in layouts.items():
    shape = list(np.shape(flat[path]))
    for axis, (*_, size) in by_axis.items():
      shape[axis] = size
    shapes[path] = tuple(shape)
  kernels = sorted(p for p in layouts if p.endswith("kernel"))
  draws = np.asarray(jax.random.normal(key, (sum(math.prod(shapes[p]) for p in kernels),)))
  offsets = dict(zip(kernels, np.cumsum([0] + [math.prod(shapes[p]) for p in kernels])))
  out = dict(flat)
  for path, by_axis in layouts.items():
    old, shape = np.asarray(flat[path]), shapes[path]
    normal = (draws[offsets[path]:offsets[path] + math.prod(shape)].reshape(shape)
              if path in offsets else None)
    value = _fresh(path, shape, normal).astype(old.dtype)
    is_new = np.ones(shape, bool)      # new on every grouped axis: drawn fresh
    is_old = np.ones(shape, bool)      # old on every grouped axis: the survivors
    take = [np.arange(n) for n in old.shape]
    put = [np.arange(n) for n in shape]
    for axis, (kept, at, is_old_axis, _) in by_axis.items():
      take[axis], put[axis] = kept, at
      index = is_old_axis.reshape([-1 if a == axis else 1 for a in range(len(shape))])
      is_old &= index
      is_new &= ~index
    value = np.where(is_new | is_old, value, np.zeros((), old.dtype))   # cross blocks: 0
    value[np.ix_(*put)] = old[np.ix_(*take)]
    out[path] = value
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()}, sep="/")


def _old_ranges(inputs: Inputs, alive, widths) -> list[list[int]]:
  """[start, stop) of the survivors on an input axis after the surgery."""
  ranges, at = [], 0
  for i, _ in inputs:
    ranges.append([at, at + int(alive[i].sum())])
    at += widths[i]
  return ranges


def split_spec(base_spec: dict, graph: Graph, alive, widths, cross_attention: bool) -> dict:
  """The rejuvenated model's spec: the widened base and where it splits
  (each split conv's old input ranges and old outputs)."""
  old = [int(a.sum()) for a in alive]
  splits = [(c.module, _old_ranges(c.inputs, alive, widths), old[c.out_group])
            for c in graph.convs if c.inputs and c.out_group is not None]
  head_path, head_inputs = graph.head
  return models.spec("rejuvenated", num_classes=base_spec["num_classes"],
                     dtype=base_spec.get("dtype", "float32"), base=base_spec, splits=splits,
                     head=(head_path.rsplit("/", 1)[0], _old_ranges(head_inputs, alive, widths)),
                     cross_attention=cross_attention)


def trainable_params(params, spec: dict) -> int:
  """The params a model trains: for the split model without cross-attention,
  all entries but the cross blocks (held at 0)."""
  total = sum(int(x.size) for x in jax.tree.leaves(params))
  if spec["name"] != "rejuvenated" or spec["options"].get("cross_attention"):
    return total
  flat = traverse_util.flatten_dict(params, sep="/")
  for module, old_in, old_out in spec["options"]["splits"]:
    kh, kw, n_in, n_out = flat[f"{module}/kernel"].shape
    old_in = int(split_nn.old_mask(old_in, n_in).sum())
    total -= kh * kw * (old_in * (n_out - old_out) + (n_in - old_in) * old_out)
  return total


def rescale(variables, graph: Graph, t: float):
  """Neural rescaling: in every group, c = min(|gamma|, t); gamma -> sign *
  t and beta -> beta * t / c where 0 < |gamma| <= t; the channel's readers
  (the next conv's inputs, the classifier's, at their offsets) are scaled by
  c / t, so the network computes the same function (ReLU and pooling
  commute with a positive scale)."""
  flat = {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(variables), sep="/").items()}
  for g, scale in zip(graph.groups, graph.scales):
    if g.fixed:                          # the original leaves the fixed layers alone
      continue
    gamma = flat[_P + scale]
    c = np.minimum(np.abs(gamma), t)
    on = c > 0
    factor = np.where(on, t / np.where(on, c, 1), 1).astype(gamma.dtype)
    flat[_P + scale] = np.where(on & (np.abs(gamma) <= t), np.sign(gamma) * t, gamma)
    bias = _P + scale.rsplit("/", 1)[0] + "/bias"
    flat[bias] = flat[bias] * factor
    for p, axis, offset in _readers(g)[1:]:
      if p.endswith("kernel") and axis in (0, 2):
        shape = [1] * flat[p].ndim
        shape[axis] = -1
        index = [slice(None)] * flat[p].ndim
        index[axis] = slice(offset, offset + len(gamma))
        flat[p] = flat[p].copy()
        flat[p][tuple(index)] = flat[p][tuple(index)] / factor.reshape(shape)
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


# --- the objective ----------------------------------------------------------

def _part(outputs, which: int):
  return outputs[:, which] if outputs.ndim == 3 else outputs


def objective(label_smoothing: float = 0.0) -> steps_lib.Objective:
  """CE(z_old) + CE(z_new) on the split model (before NR: plain CE and a 0
  term); the logits are the prediction z_old + z_new."""
  ce_new = steps_lib.cross_entropy(label_smoothing, lambda o: _part(o, split_nn.NEW))

  def new_term(params, outputs, batch, state):
    return ce_new(params, outputs, batch, state) if outputs.ndim == 3 else jnp.zeros(())
  return steps_lib.Objective(
      {"ce": steps_lib.cross_entropy(label_smoothing, lambda o: _part(o, split_nn.OLD)),
       "ce_new": new_term},
      logits=lambda o: _part(o, split_nn.PREDICTION))


def predict(model_ref):
  """The eval's predictions: the sum (""), and each sub-network alone."""
  def fn(variables, images, key):
    del key
    out = model_ref().apply(variables, images, train=False)
    return {"": _part(out, 2), "old": _part(out, 0), "new": _part(out, 1)}
  return fn


# --- the run ----------------------------------------------------------------

def _scale_mask(graph: Graph):
  """The changeable BN scales (not the fixed layers')."""
  paths = {s for g, s in zip(graph.groups, graph.scales) if not g.fixed}
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda p, _: path_str(p) in paths, params)


def run(config, workdir: str) -> dict:
  validate(config)
  check_model(config)
  nr = config.rejuvenation
  base_name = config.model.name
  probe, groups = _groups(config)      # the config's model's (the widths do not change them)
  graph_box = {}

  def graph_of(params):
    if "graph" not in graph_box:
      graph_box["graph"] = Graph.of(params, groups, base_name)
    return graph_box["graph"]

  # The L1 mask is a function of the params' paths: the same for every width.
  lazy_mask = lambda params: _scale_mask(graph_of(params))(params)
  def optimizer(strength):
    return lambda config, schedule, params: sp.with_l1(
        make_optimizer(config.optimizer, schedule, params), strength, lazy_mask)
  exp = setup(config, workdir, optimizer=optimizer(nr.sparsity))
  spe = exp.steps_per_epoch
  sparsify_steps = int(nr.max_sparsify_epochs) * spe
  constant = lambda step: jnp.asarray(config.schedule.lr, jnp.float32)
  seen = {}     # step -> utilisation, at the epoch ends this process ran
  info = {"start": {0: 1.0}}

  def measure(state):
    params = parallel.to_host(state.params)
    graph = graph_of(params)
    alive = alive_channels(params, graph, nr.live_threshold, nr.dead_layer_threshold)
    hw = (output_hw(exp.model, steps_lib.model_variables(params, parallel.to_host(
        state.batch_stats)), exp.data.info.image_shape) if nr.flops else None)
    live, total = utilisation(params, graph, alive, hw)
    return alive, live / total

  def epoch_end(step, state):
    if exp.model_spec["name"] == "rejuvenated":
      return None
    _, u = measure(state)
    seen[step] = u
    strength = float(jax.device_get(state.opt_state.strength))
    # The previous epoch's (1.0 before the first, as the original starts).
    previous = seen.get(step - spe, info["start"].get(step - spe))
    exp.writer.write(step, {"utilisation": u, "lambda": strength}, prefix="nr/")
    logging.info("epoch %d: utilisation %.4f at lambda %.2e", step // spe, u, strength)
    grown = next_strength(strength, previous, u, nr.sparsity_growth, nr.growth_threshold)
    if grown == strength:
      return None
    return exp.place(state.replace(opt_state=sp.set_l1_strength(state.opt_state, grown)))

  def fired(step, state):
    return seen[step] <= nr.target

  def surgery(exp, state):
    start = time.perf_counter()
    alive, u = measure(state)
    params = parallel.to_host(state.params)
    graph = graph_of(params)
    variables = steps_lib.model_variables(params, parallel.to_host(state.batch_stats))
    if u > nr.target:
      logging.warning("NR did not fire: utilisation %.4f > target %.2f after %d sparsify "
                      "epochs; training the unchanged model", u, nr.target, nr.max_sparsify_epochs)
      return state
    if nr.rescale:
      variables = rescale(variables, graph, nr.rescale)
    ratio = math.sqrt(1.0 / u)           # sqrt(all / alive), FLOPs-weighted with `flops`
    widths = new_widths(alive, ratio)
    key = jax.random.fold_in(rng.purpose_key(config.seed, rng.REJUVENATION), 0)
    new = rejuvenate(variables, graph, alive, widths, key)
    base = dict(exp.model_spec)
    base["options"] = dict(base["options"], **models.group_width_options(
        base_name, probe, graph.groups, widths))
    exp.rebuild(split_spec(base, graph, alive, widths, nr.cross_attention))
    logging.info("NR at step %d: utilisation %.4f, r = %.4f, widths %s -> %s (alive %s)",
                 int(state.step), u, ratio, [a.size for a in alive], widths,
                 [int(a.sum()) for a in alive])
    out = exp.new_state(state, new["params"], new.get("batch_stats", {}))
    _write_surgery(exp.workdir, {
        "step": int(state.step), "epoch": int(state.step) // spe, "utilisation": u,
        "ratio": ratio, "widths_before": [int(a.size) for a in alive],
        "groups": [g.producer[len(_P):].rsplit("/", 1)[0] for g in graph.groups],
        "alive": [int(a.sum()) for a in alive], "widths_after": widths,
        "params_before": int(sum(x.size for x in jax.tree.leaves(params))),
        "params_after": trainable_params(new["params"], exp.model_spec),
        "params_after_stored": int(sum(x.size for x in jax.tree.leaves(new["params"]))),
        "surgery_seconds": time.perf_counter() - start})
    return out

  def post_optimizer(exp):
    return (optimizer(0.0)(config, exp.schedule, exp.state.params), exp.schedule)

  obj = objective(config.label_smoothing)
  plan = [phases.Phase("sparsify", sparsify_steps, optimizer=lambda e: (
              e.make_tx(constant, e.state.params), constant),
                       epoch_end=[epoch_end], until=fired),
          phases.Phase("rejuvenated", exp.num_steps, enter=surgery, optimizer=post_optimizer,
                       fresh_optimizer=True)]
  if exp.model_spec["name"] != "rejuvenated" and exp.start_step:
    # A resumed sparsify phase: the utilisation the restored state has.
    info["start"][exp.start_step] = measure(exp.state)[1]
  state = phases.run(exp, plan, objective=obj,
                     evaluate=exp.evaluator(obj, predict=predict(lambda: exp.model)),
                     desc="rejuvenation")
  return _report(config, exp, workdir, state, exp.train_step_compiles())


def _surgery_path(workdir: str) -> str:
  return os.path.join(workdir, "rejuvenation.json")


def _write_surgery(workdir: str, record: dict) -> None:
  """What the surgery did (process 0; rewritten identically if a resumed run
  redoes it)."""
  if parallel.is_main_process():
    with open(_surgery_path(workdir) + ".tmp", "w") as f:
      json.dump(record, f, indent=1)
    os.replace(_surgery_path(workdir) + ".tmp", _surgery_path(workdir))


def _report(config, exp, workdir, state, compiles: int) -> dict:
  if not exp.writer.active:
    return {}
  nr = config.rejuvenation
  spe = exp.steps_per_epoch
  by_step = metrics_by_step(workdir)
  curve = [{"epoch": s // spe, "utilisation": r["nr/utilisation"], "lambda": r["nr/lambda"],
            "top1": r.get("eval/top1")}
           for s, r in sorted(by_step.items()) if "nr/utilisation" in r]
  fired = exp.model_spec["name"] == "rejuvenated"
  final = by_step.get(int(state.step), {})
  results = {"model": config.model.name, "fired": fired, "target": nr.target,
             "sparsify_epochs": len(curve), "epochs": int(state.step) / spe,
             "cross_attention": bool(nr.cross_attention), "utilisation": curve,
             "final": {k[len("eval/"):]: v for k, v in final.items() if k.startswith("eval/")},
             "params": trainable_params(parallel.to_host(state.params), exp.model_spec),
             "train_step_compiles": compiles}
  lines = []
  if fired:
    with open(_surgery_path(workdir)) as f:
      results["surgery"] = json.load(f)
    n = results["surgery"]
    lines.append(f"NR fired after {n['epoch']} sparsify epochs at utilisation "
                 f"{n['utilisation']:.3f} <= {nr.target}; r = {n['ratio']:.3f}; params "
                 f"{n['params_before']:,} -> {n['params_after']:,} trained ("
                 f"{n['params_after_stored']:,} stored, the cross blocks held at 0 among them)")
    lines.append(f"widths {n['widths_before']} -> alive {n['alive']} -> {n['widths_after']}")
  else:
    lines.append(f"NR never fired: utilisation stayed above the target {nr.target} (lowest "
                 f"{min(r['utilisation'] for r in curve):.3f}) within max_sparsify_epochs="
                 f"{nr.max_sparsify_epochs}; the unchanged model trained the full schedule")
  if "top1" in results["final"]:
    f = results["final"]
    lines.append(f"final test top-1 {100 * f['top1']:.2f}% (old sub-network alone "
                 f"{100 * f.get('old_top1', float('nan')):.2f}%, new alone "
                 f"{100 * f.get('new_top1', float('nan')):.2f}%)")
  from neurojax.plots import plot_rejuvenation  # pylint: disable=g-import-not-at-top
  return report.write(
      workdir, "rejuvenation", results,
      title=f"Neural Rejuvenation, {config.model.name}, workdir {workdir}",
      rows=curve, columns=["epoch", "utilisation", "lambda", "top1"], lines=lines,
      plot=lambda: plot_rejuvenation({config.model.name: [results]},
                                     os.path.join(workdir, "rejuvenation.png")))
