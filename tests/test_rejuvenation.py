"""Neural Rejuvenation: utilisation, the L1 term, surgery, the split network,
rescaling, and the method end to end (resume, 2 processes)."""

import json
import subprocess
import sys
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from neurojax import models
from neurojax import sparsity as sp
from neurojax.methods import rejuvenation as nr
from neurojax.models.layers import batch_norm, conv, pooled_classifier
from neurojax.nn import rejuvenation as split_nn

SHAPE = (8, 8, 1)


def _net_groups(model):
  groups = []
  for i, (name, reader) in enumerate((("conv2", ("params/conv3/kernel", 2)),
                                      ("conv3", ("params/fc/kernel", 0)))):
    bn = f"bn{i + 2}"
    groups.append(models.ChannelGroup(f"params/{name}/kernel", (
        (f"params/{bn}/scale", 0), (f"params/{bn}/bias", 0), (f"batch_stats/{bn}/mean", 0),
        (f"batch_stats/{bn}/var", 0), reader)))
  return groups


if "test_densenet" not in models.names():   # DenseNet-BC-100's code, 3 blocks of 2 layers, k = 2
  from neurojax.models.densenet import _densenet  # pylint: disable=g-import-not-at-top
  models.register("test_densenet")(_densenet((2, 2, 2), 2, "cifar", 10))


if "test_nr_net" not in models.names():
  class NRNet(nn.Module):
    """stem (fixed: in no group) 3x3 1->2, conv2 3x3/2 2->w0, conv3 1x1 w0->w1, fc."""
    num_classes: int = 10
    widths: tuple = (4, 3)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.relu(batch_norm(train, self.dtype, name="bn1")(
          conv(x, 2, 3, self.dtype, 1, 1, name="stem")))
      x = nn.relu(batch_norm(train, self.dtype, name="bn2")(
          conv(x, self.widths[0], 3, self.dtype, 2, 1, name="conv2")))
      x = nn.relu(batch_norm(train, self.dtype, name="bn3")(
          conv(x, self.widths[1], 1, self.dtype, name="conv3")))
      return pooled_classifier(x, self.num_classes, self.dtype)

  def _nr_net(num_classes=10, dtype=jnp.float32, widths=(4, 3)):
    return NRNet(num_classes=num_classes, widths=tuple(widths), dtype=dtype)
  _nr_net.channel_groups = _net_groups
  _nr_net.width_option = "widths"
  models.register("test_nr_net")(_nr_net)


def _init(name="test_nr_net", seed=0, shape=SHAPE, **options):
  model = models.get_model(name, num_classes=10, **options)
  variables = jax.jit(lambda k: model.init({"params": k}, jnp.zeros((1, *shape)),
                                           train=False))(jax.random.PRNGKey(seed))
  return model, jax.device_get(variables)


def _set(variables, path, value):
  flat = traverse_util.flatten_dict(variables, sep="/")
  flat[path] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


def test_utilisation_matches_a_hand_count():
  model, v = _init()
  v = _set(v, "params/bn2/scale", [1.0, 0.005, 0.5, 0.0])   # 0.005 < 0.01 * 1: dead
  v = _set(v, "params/bn3/scale", [2e-4, -1e-4, 5e-4])       # max < 1e-3: the layer is dead
  graph = nr.Graph.of(v["params"], models.channel_groups("test_nr_net", model))
  assert [c.path for c in graph.convs] == ["conv2/kernel", "conv3/kernel", "stem/kernel"]
  alive = nr.alive_channels(v["params"], graph)
  np.testing.assert_array_equal(alive[0], [True, False, True, False])
  np.testing.assert_array_equal(alive[1], [False] * 3)
  # stem 3*3*1*2 (fixed: all alive) + conv2 3*3*2*(2 of 4) + conv3 1*1*(2 of 4)*0
  assert nr.utilisation(v["params"], graph, alive) == (18 + 36, 18 + 72 + 12)
  # FLOPs: outputs 8x8 (stem), 4x4 (conv2, conv3)
  hw = nr.output_hw(model, v, SHAPE)
  assert {k: hw[k] for k in ("stem", "conv2", "conv3")} == {"stem": 64, "conv2": 16, "conv3": 16}
  assert nr.utilisation(v["params"], graph, alive, hw) == (18 * 64 + 36 * 16,
                                                         18 * 64 + 72 * 16 + 12 * 16)
  # A layer none of whose inputs is alive is dead, whatever its scales.
  v = _set(_set(v, "params/bn2/scale", [1e-4] * 4), "params/bn3/scale", [1.0, 2.0, 3.0])
  alive = nr.alive_channels(v["params"], graph)
  assert not alive[0].any() and not alive[1].any()


def test_a_conv_into_an_undeclared_concatenation_is_refused():
  model = models.get_model("densenet_bc100", num_classes=10)
  params = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, 8, 8, 3)),
                                               train=False), jax.random.PRNGKey(0))["params"]
  with pytest.raises(ValueError, match="reads changeable channels but writes fixed"):
    nr.Graph.of(params, models.channel_groups("densenet_bc100", model), "densenet_bc100")
  no_stem = [g for g in models.all_channel_groups("densenet_bc100", model)
             if g.producer != "params/conv0/kernel"]
  with pytest.raises(ValueError, match=r"channels \[0, 80\) of the input axis of block1_layer\d+/conv1"):
    nr.Graph.of(params, no_stem, "densenet_bc100")


def _random_gammas(v, graph, seed=0):
  """Every changeable BN scale: about half its channels dead (1e-6), the
  rest 0.3..1.3; random BN biases and running means."""
  flat = traverse_util.flatten_dict(v, sep="/")
  rng = np.random.default_rng(seed)
  for g, scale in zip(graph.groups, graph.scales):
    if not g.fixed:
      n = flat["params/" + scale].shape[0]
      gamma = np.where(rng.random(n) < 0.5, 0.3 + rng.random(n), 1e-6)
      gamma[0] = 1.0
      flat["params/" + scale] = gamma.astype(np.float32)
  for path in flat:
    if path.endswith("/mean") or (path.endswith("/bias") and "bn" in path):
      flat[path] = (0.1 * rng.normal(size=flat[path].shape)).astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


def _widen(name, model, v, graph, cross_attention=False, **options):
  alive = nr.alive_channels(v["params"], graph)
  live, total = nr.utilisation(v["params"], graph, alive)
  ratio = float(np.sqrt(total / live))
  widths = nr.new_widths(alive, ratio)
  new = nr.rejuvenate(v, graph, alive, widths, jax.random.PRNGKey(3))
  wopts = models.group_width_options(name, model, graph.groups, widths)
  base = models.spec(name, num_classes=10, **options, **wopts)
  return alive, ratio, widths, new, wopts, nr.split_spec(base, graph, alive, widths,
                                                          cross_attention)


def test_densenet_surgery_widens_the_concatenations_segment_by_segment():
  """Every conv of a DenseNet changes width (the stem, conv1, conv2, the
  transitions); an input that concatenates several layers holds each
  layer's survivors then its new channels; the old sub-network computes
  the sparsified net. The growth is sqrt(1/u), not int(sqrt(1/u)) (the
  original's DenseNet: no regrowth above u = 0.25)."""
  name, options = "test_densenet", {}
  model, v = _init(name, shape=(8, 8, 3), **options)
  graph = nr.Graph.of(v["params"], models.all_channel_groups(name, model), name)
  assert len(graph.groups) == 1 + 2 * 6 + 2 and not any(g.fixed for g in graph.groups)
  layer2 = next(c for c in graph.convs if c.path == "block1_layer2/conv1/kernel")
  assert [graph.groups[i].producer for i, _ in layer2.inputs] == [
      "params/conv0/kernel", "params/block1_layer1/conv2/kernel"]
  assert [o for _, o in layer2.inputs] == [0, 4]           # the stem's 2k = 4, then k = 2
  v = _random_gammas(v, graph)
  # A layer is dead when none of its inputs is alive: layer 1's conv1 dead
  # kills its conv2 (it reads only that), not layer 2's conv1 (the stem too).
  flat = traverse_util.flatten_dict(v, sep="/")
  flat["params/block1_layer1/bn1/scale"] = np.full(8, 1e-4, np.float32)
  alive = nr.alive_channels(traverse_util.unflatten_dict(flat, sep="/")["params"], graph)
  by = {g.producer: a for g, a in zip(graph.groups, alive)}
  assert not by["params/block1_layer1/conv2/kernel"].any()
  assert by["params/block1_layer2/conv1/kernel"].any() and by["params/conv0/kernel"].any()
  alive, ratio, widths, new, wopts, spec = _widen(name, model, v, graph, **options)
  assert 1 < ratio < 2 and max(widths) > 1                      # regrowth below 2x
  width_of = {g.producer: w for g, w in zip(graph.groups, widths)}
  assert wopts["stem_width"] == width_of["params/conv0/kernel"]
  assert wopts["transition_widths"][1] == width_of["params/transition2/conv/kernel"]
  assert len(wopts["growth_widths"]) == len(wopts["bottleneck_widths"]) == 6
  # layer 2's conv1 input: [stem old | stem new | layer-1 conv2 old | its new]
  f_old = traverse_util.flatten_dict(v, sep="/")
  f_new = traverse_util.flatten_dict(jax.device_get(new), sep="/")
  by = {g.producer: (a, w) for g, a, w in zip(graph.groups, alive, widths)}
  (a0, w0), (a1, w1) = by["params/conv0/kernel"], by["params/block1_layer1/conv2/kernel"]
  (a2, w2) = by["params/block1_layer2/conv1/kernel"]
  k = f_new["params/block1_layer2/conv1/kernel"]
  assert k.shape[2:] == (w0 + w1, w2)
  put = np.concatenate([np.arange(a0.sum()), w0 + np.arange(a1.sum())])
  take = np.concatenate([np.flatnonzero(a0), 4 + np.flatnonzero(a1)])
  np.testing.assert_array_equal(k[:, :, put][..., :a2.sum()],
                                f_old["params/block1_layer2/conv1/kernel"][:, :, take][
                                    ..., np.flatnonzero(a2)])             # bit-exact
  old_in = split_nn.old_mask(dict((m, i) for m, i, _ in spec["options"]["splits"])[
      "block1_layer2/conv1"], w0 + w1)
  assert not k[:, :, old_in][..., a2.sum():].any() and not k[:, :, ~old_in][..., :a2.sum()].any()
  images = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
  apply = jax.jit(model.apply)
  before = apply(_zero_dead(v, graph, alive), images)
  split = models.build(spec)
  after = jax.jit(lambda v, x: split.apply(v, x, train=False))(new, images)
  np.testing.assert_allclose(after[:, split_nn.OLD], before, rtol=1e-4, atol=1e-5)
  # Neural rescaling scales each reader of a concatenation at its offset.
  np.testing.assert_allclose(apply(nr.rescale(v, graph, 0.5), images), apply(v, images),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,width", [("resnet18", 2), ("resnet50", 1)])
def test_resnet_surgery_widens_the_stream_and_keeps_the_old_logits(name, width):
  """The residual stream (fixed groups) is never dead and grows by r too,
  its new channels fed by the new sub-network only."""
  model, v = _init(name, shape=(8, 8, 3), stem="small", width=width)
  graph = nr.Graph.of(v["params"], models.all_channel_groups(name, model), name)
  v = _random_gammas(v, graph)
  alive, ratio, widths, new, options, spec = _widen(name, model, v, graph, stem="small",
                                                    width=width)
  assert all(a.all() for g, a in zip(graph.groups, alive) if g.fixed)
  streams = [w for g, w in zip(graph.groups, widths) if g.fixed]
  assert set(options["stream_widths"]) == set(streams)
  assert options["stream_widths"][-1] == int(model.streams()[-1] * ratio)
  images = jax.random.normal(jax.random.PRNGKey(5), (4, 8, 8, 3))
  before = jax.jit(model.apply)(_zero_dead(v, graph, alive), images)
  split = models.build(spec)
  after = jax.jit(lambda v, x: split.apply(v, x, train=False))(new, images)
  np.testing.assert_allclose(after[:, split_nn.OLD], before, rtol=1e-4, atol=1e-5)


def test_l1_adds_lambda_sign_on_the_mask_only_and_changes_without_a_rejit():
  params = {"bn": {"scale": jnp.array([0.5, -0.2, 0.0]), "bias": jnp.array([0.1, -0.1, 0.3])},
            "conv": {"kernel": jnp.array([[1.0, -1.0]])}}
  mask = {"bn": {"scale": True, "bias": False}, "conv": {"kernel": False}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.25), params)
  tx = sp.with_l1(optax.sgd(1.0), 1e-2, mask)
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step(grads, state, params)
  np.testing.assert_allclose(updates["bn"]["scale"], [-0.26, -0.24, -0.25], rtol=1e-6)
  np.testing.assert_array_equal(updates["bn"]["bias"], -grads["bn"]["bias"])
  np.testing.assert_array_equal(updates["conv"]["kernel"], -grads["conv"]["kernel"])
  updates, _ = step(grads, sp.set_l1_strength(state, 0.1), params)
  np.testing.assert_allclose(updates["bn"]["scale"], [-0.35, -0.15, -0.25], rtol=1e-6)
  assert step._cache_size() == 1        # pylint: disable=protected-access


def test_the_imagenet_lambda_schedule():
  grow = lambda s, prev, cur: nr.next_strength(s, prev, cur, 5e-5, 0.01)
  assert grow(0.0, 1.0, 1.0) == 5e-5               # no fall: grows
  assert grow(5e-5, 1.0, 0.995) == 1e-4            # fell by less than 0.01
  assert grow(1e-4, 0.99, 0.95) == 1e-4            # fell by 0.04: stays
  assert nr.next_strength(1.5e-4, 1.0, 1.0, 0.0, 0.01) == 1.5e-4   # CIFAR: fixed


def _sparsified(seed=1):
  """A test_nr_net with hand-set BN scales (some channels dead) and random
  running statistics."""
  model, v = _init(seed=seed)
  v = _set(v, "params/bn2/scale", [0.8, 1e-4, -0.6, 0.3])
  v = _set(v, "params/bn3/scale", [0.5, 0.7, 2e-3])
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  for k, path in zip(keys, ("batch_stats/bn2/mean", "batch_stats/bn3/mean",
                            "params/bn2/bias", "params/bn3/bias")):
    v = _set(v, path, 0.1 * jax.random.normal(k, traverse_util.flatten_dict(v, sep="/")[path].shape))
  return model, v, nr.Graph.of(v["params"], models.channel_groups("test_nr_net", model))


def _surgery(model, v, graph, cross_attention=False):
  alive = nr.alive_channels(v["params"], graph)
  live, total = nr.utilisation(v["params"], graph, alive)
  ratio = float(np.sqrt(total / live))
  widths = nr.new_widths(alive, ratio)
  new = nr.rejuvenate(v, graph, alive, widths, jax.random.PRNGKey(3))
  base = models.spec("test_nr_net", num_classes=10, widths=widths)
  spec = nr.split_spec(base, graph, alive, widths, cross_attention)
  return alive, ratio, widths, new, spec


def test_surgery_copies_survivors_draws_new_and_zeroes_the_cross_blocks():
  model, v, graph = _sparsified()
  alive, ratio, widths, new, spec = _surgery(model, v, graph)
  assert [a.tolist() for a in alive] == [[True, False, True, True], [True, True, False]]
  live, total = 18 + 9 * 2 * 3 + 3 * 2, 18 + 72 + 12
  assert ratio == pytest.approx(np.sqrt(total / live))
  assert widths == [int(3 * ratio), int(2 * ratio)] == [3, 2] or widths == [
      int(3 * ratio), int(2 * ratio)]
  f_old = traverse_util.flatten_dict(v, sep="/")
  f_new = traverse_util.flatten_dict(jax.device_get(new), sep="/")
  i0, i1 = np.flatnonzero(alive[0]), np.flatnonzero(alive[1])
  a0, a1 = len(i0), len(i1)
  np.testing.assert_array_equal(f_new["params/conv2/kernel"][..., :a0],
                                f_old["params/conv2/kernel"][..., i0])      # bit-exact
  np.testing.assert_array_equal(f_new["params/conv3/kernel"][:, :, :a0, :a1],
                                f_old["params/conv3/kernel"][:, :, i0][..., i1])
  for leaf in ("params/bn2/scale", "params/bn2/bias", "batch_stats/bn2/mean",
               "batch_stats/bn2/var"):
    np.testing.assert_array_equal(f_new[leaf][:a0], f_old[leaf][i0])
  np.testing.assert_array_equal(f_new["params/fc/kernel"][:a1], f_old["params/fc/kernel"][i1])
  np.testing.assert_array_equal(f_new["params/fc/bias"], f_old["params/fc/bias"])
  np.testing.assert_array_equal(f_new["params/stem/kernel"], f_old["params/stem/kernel"])
  # New BN: scale 0.5, bias 0, mean 0, var 1; cross blocks of conv3 exactly 0.
  n0, n1 = widths
  np.testing.assert_array_equal(f_new["params/bn2/scale"][a0:], 0.5)
  np.testing.assert_array_equal(f_new["params/bn2/bias"][a0:], 0.0)
  np.testing.assert_array_equal(f_new["batch_stats/bn2/var"][a0:], 1.0)
  k3 = f_new["params/conv3/kernel"]
  assert k3.shape == (1, 1, n0, n1)
  assert not k3[:, :, :a0, a1:].any() and not k3[:, :, a0:, :a1].any()
  assert spec["options"]["splits"] == [["conv3", [[0, a0]], a1]]
  assert spec["options"]["head"][1] == [[0, a1]]


def test_surgery_with_many_new_channels_draws_them_as_the_original():
  """Statistics of the new entries: conv N(0, 2 / (k*k*out)), fc N(0, 0.01)."""
  model, v = _init(widths=(64, 64))
  v = _set(v, "params/bn2/scale", np.where(np.arange(64) < 8, 1.0, 0.0))
  v = _set(v, "params/bn3/scale", np.where(np.arange(64) < 8, 1.0, 0.0))
  graph = nr.Graph.of(v["params"], models.channel_groups("test_nr_net", model))
  alive = nr.alive_channels(v["params"], graph)
  widths = [200, 200]
  new = traverse_util.flatten_dict(jax.device_get(nr.rejuvenate(
      v, graph, alive, widths, jax.random.PRNGKey(0))), sep="/")
  k2 = new["params/conv2/kernel"][..., 8:]                  # from the stem: no cross block
  assert np.std(k2) == pytest.approx(np.sqrt(2 / (9 * 200)), rel=0.05)
  k3 = new["params/conv3/kernel"][:, :, 8:, 8:]
  assert np.std(k3) == pytest.approx(np.sqrt(2 / 200), rel=0.05)
  assert np.std(new["params/fc/kernel"][8:]) == pytest.approx(0.01, rel=0.05)


def _zero_dead(v, graph, alive):
  """The sparsified net with its dead channels' BN scale and bias at 0 (what
  the old sub-network computes)."""
  flat = traverse_util.flatten_dict(v, sep="/")
  for scale, a in zip(graph.scales, alive):
    for leaf in (scale, scale.replace("scale", "bias")):
      flat["params/" + leaf] = np.where(a, flat["params/" + leaf], 0.0)
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("cross_attention", [False, True])
def test_at_surgery_the_old_sub_network_gives_the_old_logits(cross_attention):
  model, v, graph = _sparsified()
  alive, _, _, new, spec = _surgery(model, v, graph, cross_attention)
  images = jax.random.normal(jax.random.PRNGKey(5), (6, *SHAPE))
  before = model.apply(_zero_dead(v, graph, alive), images, train=False)
  after = models.build(spec).apply(new, images, train=False)
  assert after.shape == (6, 3, 10)
  np.testing.assert_allclose(after[:, split_nn.OLD], before, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(after[:, split_nn.PREDICTION],
                             after[:, split_nn.OLD] + after[:, split_nn.NEW]
                             - new["params"]["fc"]["bias"], rtol=1e-5, atol=1e-5)


class _MLP(nn.Module):
  """x -> l1 (4) -> relu -> l2 (4) -> relu -> fc (3): the split l2 and head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(4, name="l1")(x))
    x = nn.relu(nn.Dense(4, name="l2")(x))
    return nn.Dense(3, name="fc")(x)


@pytest.mark.parametrize("cross_attention", [False, True])
def test_both_training_schemes_match_a_hand_computation(cross_attention):
  base = _MLP()
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
  v = base.init(jax.random.PRNGKey(1), x)
  old = [[0, 2]] if cross_attention else 2       # a count, or [start, stop) ranges
  model = split_nn.Rejuvenated(base, splits=(("l2", old, 2),), head=("fc", old),
                               cross_attention=cross_attention)
  p = jax.tree.map(np.asarray, v["params"])
  h = np.maximum(x @ p["l1"]["kernel"] + p["l1"]["bias"], 0)
  w, b = p["l2"]["kernel"], p["l2"]["bias"]
  ll = h[:, :2] @ w[:2, :2] + b[:2]
  rr = h[:, 2:] @ w[2:, 2:] + b[2:]
  if cross_attention:
    sig = lambda z: 1 / (1 + np.exp(-z))
    lr = h[:, 2:] @ w[2:, :2] + b[:2]
    rl = h[:, :2] @ w[:2, 2:] + b[2:]
    ll, rr = ll + lr * 2 * sig(ll), rr + rl * 2 * sig(rr)
  h2 = np.maximum(np.concatenate([ll, rr], 1), 0)
  wf, bf = p["fc"]["kernel"], p["fc"]["bias"]
  z_old, z_new = h2[:, :2] @ wf[:2] + bf, h2[:, 2:] @ wf[2:] + bf
  out = model.apply(v, x)
  np.testing.assert_allclose(out[:, split_nn.OLD], z_old, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, split_nn.NEW], z_new, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, split_nn.PREDICTION], z_old + z_new - bf, rtol=1e-5,
                             atol=1e-6)
  # The loss: CE(z_old) + CE(z_new); the logits: the prediction.
  labels = jnp.array([0, 1, 2, 0, 1])
  objective = nr.objective()
  terms = {k: float(t(None, out, {"label": labels}, None)) for k, t in objective.terms.items()}
  ce = lambda z: float(np.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels)))
  assert terms == pytest.approx({"ce": ce(z_old), "ce_new": ce(z_new)}, rel=1e-5)
  np.testing.assert_array_equal(objective.logits(out), out[:, split_nn.PREDICTION])
  if not cross_attention:    # the cross blocks get no gradient
    grads = jax.grad(lambda q: jnp.sum(model.apply({"params": q}, x)))(v["params"])
    g = np.asarray(grads["l2"]["kernel"])
    assert not g[:2, 2:].any() and not g[2:, :2].any() and g[:2, :2].any()


def test_neural_rescaling_preserves_the_function():
  model, v = _init("vgg19_nr", shape=(16, 16, 1), widths=(4,) * 16)
  flat = traverse_util.flatten_dict(v, sep="/")
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 64))
  for path in list(flat):
    if path.endswith(("bn3/scale", "bn9/scale", "bn16/scale")):
      flat[path] = np.asarray([0.05, -0.3, 0.9, 0.0], np.float32)
    elif path.endswith(("/bias", "/mean")):
      flat[path] = 0.1 * np.asarray(jax.random.normal(next(keys), flat[path].shape))
  v = traverse_util.unflatten_dict(flat, sep="/")
  graph = nr.Graph.of(v["params"], models.channel_groups("vgg19_nr", model))
  out = nr.rescale(v, graph, 0.5)
  scale = np.asarray(out["params"]["bn3"]["scale"])
  np.testing.assert_array_equal(scale, np.float32([0.5, -0.5, 0.9, 0.0]))   # |gamma| <= t: +-t
  images = jax.random.normal(jax.random.PRNGKey(4), (4, 16, 16, 1))
  np.testing.assert_allclose(model.apply(out, images, train=False),
                             model.apply(v, images, train=False), rtol=1e-4, atol=1e-5)


# --- the method end to end ---------------------------------------------------

TINY_NR = ["--config.method=rejuvenation", "--config.model.widths=(4,4,4,4,4,4,4,4,4,4,4,4,4,4,"
           "4,4)", "--config.data.synthetic_shape=(8,8,3)", "--config.rejuvenation.sparsity=0.01",
           # dead below 0.99 * max |gamma|: NR fires after the first epoch (16 steps) with
           # no channel near the threshold, so 1 x 4 devices and 2 x 2 agree bit for bit
           "--config.rejuvenation.live_threshold=0.99", "--config.rejuvenation.target=0.95",
           "--config.rejuvenation.max_sparsify_epochs=2", "--config.num_steps=16",
           "--config.checkpoint_every_steps=8", "--config.eval_every_steps=16",
           "--config.log_every_steps=8"]


def _tiny(tmp_path_factory_or_path, *extra, devices=1):
  from cli import TINY, run  # pylint: disable=g-import-not-at-top
  run(tmp_path_factory_or_path, *TINY_NR, *extra, devices=devices, config=TINY + ":vgg19_nr")
  return json.loads((tmp_path_factory_or_path / "results.json").read_text())


@pytest.fixture(scope="module")
def nr_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("nr")
  return workdir, _tiny(workdir)


def test_the_method_fires_rebuilds_once_and_reports(nr_run):
  workdir, results = nr_run
  assert results["fired"] and results["surgery"]["epoch"] == 1
  s = results["surgery"]
  assert s["widths_after"] == [max(1, int(a * s["ratio"])) for a in s["alive"]]
  assert s["groups"] == [f"conv{i}" for i in range(1, 17)]
  assert results["train_step_compiles"] == 2      # before the surgery and after, no more
  assert [r["epoch"] for r in results["utilisation"]] == list(range(1, s["epoch"] + 1))
  assert results["utilisation"][-1]["utilisation"] <= 0.9 < results["utilisation"][0][
      "utilisation"] or len(results["utilisation"]) == 1
  assert results["epochs"] == s["epoch"] + 1      # 16 steps (an epoch) after NR
  assert {"top1", "old_top1", "new_top1"} <= set(results["final"])
  assert (workdir / "rejuvenation.png").exists()


def test_killed_before_and_after_the_surgery_resumes_bit_identical(nr_run, tmp_path):
  from cli import ROOT, TINY, command, env  # pylint: disable=g-import-not-at-top
  from neurojax.train.experiment import load_run  # pylint: disable=g-import-not-at-top
  reference, results = nr_run
  fire = results["surgery"]["step"]
  workdir = tmp_path / "killed"
  for kill_at in (fire - 8, fire + 8):          # while sparsifying, then after the surgery
    proc = subprocess.run([sys.executable, f"{ROOT}/tests/kill_at.py", str(kill_at),
                           *command(workdir, *TINY_NR, config=TINY + ":vgg19_nr")[3:]],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
  _tiny(workdir)
  _, _, got = load_run(str(workdir))
  _, _, want = load_run(str(reference))
  assert int(got.step) == int(want.step)
  chex.assert_trees_all_equal(jax.device_get(got.params), jax.device_get(want.params))
  chex.assert_trees_all_equal(jax.device_get(got.batch_stats), jax.device_get(want.batch_stats))
  done = json.loads((workdir / "results.json").read_text())
  assert done["final"] == results["final"] and done["utilisation"] == results["utilisation"]


def test_two_processes_match_one_across_the_surgery(nr_run, tmp_path):
  """2 processes x 2 devices against the 1-device run: BN statistics and the
  utilisation are over the global batch and params, so they agree, also
  after the surgery."""
  from cli import TINY, command, last_metrics, run_together  # pylint: disable=g-import-not-at-top
  from neurojax.train.experiment import load_run  # pylint: disable=g-import-not-at-top
  single, results = nr_run
  multi = tmp_path / "multi"
  run_together(lambda port: [
      command(multi, *TINY_NR, "--config.distributed.num_processes=2",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.coordinator_address=localhost:{port}",
              config=TINY + ":vgg19_nr")
      for i in range(2)], devices=2)
  multi_results = json.loads((multi / "results.json").read_text())
  assert results["fired"] and multi_results["surgery"]["widths_after"] == results["surgery"][
      "widths_after"]
  _, _, s1 = load_run(str(single))
  _, _, s2 = load_run(str(multi))
  assert int(s1.step) == int(s2.step)
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s2.params),
                              rtol=1e-5, atol=1e-6)
  m1, m2 = last_metrics(single), last_metrics(multi)
  assert m1.keys() == m2.keys()
  chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)
