"""The Neural Rejuvenation model zoo (vgg19_nr, vgg19_bn, resnet164,
densenet_bc100, vgg16_nr, densenet121) and the ResNets' block widths:
param counts against the original definitions, forward passes, channel
groups, width options and stages."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from neurojax import models
from neurojax import sparsity as sp

# Param counts of the original PyTorch definitions, counted once with their
# code (sum of p.numel() over model.parameters()):
# NeuralRejuvenation-CVPR19 models/cifar/vgg.py vgg19_bn, models/cifar/resnet.py
# resnet(depth=110), models/cifar/densenet.py densenet(depth=100, growthRate=40,
# compressionRate=2), models/imagenet/vgg.py vgg_nr(), models/imagenet/densenet.py
# densenet121_nr(); pytorch-classification models/cifar/vgg.py vgg19_bn.
COUNTS = [
    ("vgg19_nr", 10, 20_035_018), ("vgg19_nr", 100, 20_081_188),
    ("vgg19_bn", 10, 20_040_522),
    ("resnet164", 10, 1_704_154),       # 100 classes: 1,727,284
    ("densenet_bc100", 10, 8_269_050),  # 100 classes: 8,371,740
    ("vgg16_nr", 1000, 20_550_568),
    ("densenet121", 1000, 7_915_688),
]
NEW = {"vgg19_nr": 10, "vgg19_bn": 10, "resnet164": 10, "densenet_bc100": 10,
       "vgg16_nr": 1000, "densenet121": 1000}
WITH_GROUPS = list(NEW) + ["resnet18", "resnet50"]
PX = 32


def shapes(name, num_classes=None, px=PX, **options):
  """(model, the shapes of its variables, flattened to '/'-joined paths)."""
  return _shapes(name, NEW.get(name, 10) if num_classes is None else num_classes, px,
                 tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def _shapes(name, num_classes, px, options):
  model = models.get_model(name, num_classes=num_classes, **dict(options))
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, px, px, 3)))
  return model, traverse_util.flatten_dict(v, sep="/")


def quick_jit(f):
  """jax.jit with XLA:CPU's cheap compile: the big graphs here run once."""
  return jax.jit(f, compiler_options={"xla_backend_optimization_level": 0,
                                      "xla_llvm_disable_expensive_passes": True})


def rbg_key():
  """A key whose draws compile far faster than threefry's on XLA:CPU."""
  return jax.random.key(0, impl="rbg")


def filled(flat, seed=0):
  """Variables of these shapes without running init: He-scaled kernels and
  non-trivial BN affine and statistics."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, s in flat.items():
    leaf = path.split("/")[-1]
    if leaf == "kernel":
      x = rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    elif leaf in ("scale", "var"):
      x = rng.uniform(0.5, 1.5, s.shape)
    else:
      x = rng.normal(0.0, 0.1, s.shape)
    out[path] = x.astype(np.float32)
  return traverse_util.unflatten_dict(out, sep="/")


def n_params(flat):
  return sum(s.size for p, s in flat.items() if p.startswith("params/"))


@pytest.mark.parametrize("name,num_classes,count", COUNTS)
def test_param_counts_match_the_original(name, num_classes, count):
  assert n_params(shapes(name, num_classes)[1]) == count


def test_the_layouts_torchvision_shares():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  with torch.device("meta"):
    tv_densenet = torchvision.models.densenet121(weights=None)
    tv_vgg19 = torchvision.models.vgg19_bn(weights=None)
  # DenseNet-121: NR's convs and classifier are torchvision's (7,895,208
  # params); only the BNs differ (NR: one after each conv; torchvision: one
  # before, and norm5).
  want = sorted(tuple(m.weight.shape) for m in tv_densenet.modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
  _, flat = shapes("densenet121")
  ours = sorted(tuple(s.shape[::-1]) if s.ndim == 2 else (s.shape[3], s.shape[2], *s.shape[:2])
                for p, s in flat.items() if p.endswith("/kernel"))
  assert ours == want and sum(np.prod(s) for s in want) + 1000 == 7_895_208   # + fc bias
  # CIFAR VGG-19-BN: torchvision's vgg19_bn features (convs with bias + BN).
  features = sum(p.numel() for p in tv_vgg19.features.parameters())
  _, flat = shapes("vgg19_bn")
  assert features == 20_035_392 == n_params(flat) - flat["params/fc/kernel"].size - 10
  # (torchvision's vgg16_bn, 13 convs and three FCs, 138,365,992 params, is not
  # NR's vgg_nr: 16 convs, a 7x7/2 first conv, no FCs.)


@pytest.mark.parametrize("name", list(NEW))
def test_forward_gives_logits_and_updates_batch_stats(name):
  model, flat = shapes(name)
  variables = filled(flat)
  x = np.random.default_rng(1).standard_normal((2, PX, PX, 3)).astype(np.float32)
  logits, upd = quick_jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  chex.assert_shape(logits, (2, NEW[name]))
  assert np.isfinite(np.asarray(logits)).all()
  before = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  after = traverse_util.flatten_dict(jax.device_get(upd["batch_stats"]), sep="/")
  assert before.keys() == after.keys()
  assert all(not np.allclose(before[k], after[k]) for k in before if k.endswith("mean"))


@pytest.mark.parametrize("name,dim", [("vgg19_nr", 512), ("densenet_bc100", 1140)])
def test_backbones_return_pooled_features(name, dim):
  assert models.is_backbone(name)
  model, flat = shapes(name, num_classes=0)
  assert not any(p.startswith("params/fc/") for p in flat)
  out = jax.eval_shape(model.apply, traverse_util.unflatten_dict(flat, sep="/"),
                       jnp.zeros((2, PX, PX, 3)))
  assert out.shape == (2, dim)


def check_groups(groups, flat):
  """Every path exists, and each follower's axis is as long as the
  producer's output axis."""
  for g in groups:
    c = flat[g.producer].shape[-1]
    for path, axis in g.followers:
      assert flat[path].shape[axis] == c, (g.producer, path)
  producers = [g.producer for g in groups]
  assert len(set(producers)) == len(producers)


@pytest.mark.parametrize("name", WITH_GROUPS)
def test_channel_groups_are_consistent_and_leave_fixed_layers_alone(name):
  model, flat = shapes(name)
  groups = models.channel_groups(name, model)
  check_groups(groups, flat)
  producers = {g.producer for g in groups}
  kernels = [p for p in flat if p.startswith("params/") and p.endswith("/kernel")
             and not p.startswith("params/fc/")]
  if name.startswith("vgg"):            # no fixed layers: every conv, the first one too
    assert producers == set(kernels) and len(groups) == 16
  elif name.startswith("densenet"):     # only the bottleneck convs (see the docstring)
    assert producers == {p for p in kernels if p.endswith("/conv1/kernel") and "_layer" in p}
  else:                                 # ResNets: not the stem, last convs, downsamples
    last = "conv2" if name == "resnet18" else "conv3"
    for p in kernels:
      fixed = p == "params/conv1/kernel" or "downsample" in p or p.endswith(f"/{last}/kernel")
      assert (p in producers) != fixed, p
  expected = {"vgg19_nr": 16, "vgg19_bn": 16, "vgg16_nr": 16, "resnet164": 108,
              "densenet_bc100": 48, "densenet121": 58, "resnet18": 8, "resnet50": 32}
  assert len(groups) == expected[name]


@pytest.mark.parametrize("name", WITH_GROUPS)
def test_the_width_option_slims_every_group(name):
  model, flat = shapes(name)
  groups = models.channel_groups(name, model)
  widths = tuple(max(1, flat[g.producer].shape[-1] // 2 - i % 3) for i, g in enumerate(groups))
  slim, slim_flat = shapes(name, **{models.width_option(name): widths})
  slim_groups = models.channel_groups(name, slim)
  assert [g.producer for g in slim_groups] == [g.producer for g in groups]
  assert [slim_flat[g.producer].shape[-1] for g in slim_groups] == list(widths)
  check_groups(slim_groups, slim_flat)
  assert slim_flat.keys() == flat.keys()
  touched = {p for g in groups for p, _ in [(g.producer, -1), *g.followers]}
  for path in flat.keys() - touched:    # everything else keeps its shape
    assert slim_flat[path].shape == flat[path].shape, path
  assert n_params(slim_flat) < n_params(flat)


def test_vgg_and_densenet_width_options():
  _, flat = shapes("vgg19_nr", widths=(8,) * 16)
  chex.assert_shape(flat["params/conv3/kernel"], (3, 3, 8, 8))
  chex.assert_shape(flat["params/fc/kernel"], (8, 10))
  with pytest.raises(ValueError, match=r"config.model.widths=.*16 widths"):
    models.get_model("vgg19_nr", num_classes=10, widths=(8,) * 15)
  _, flat = shapes("densenet_bc100", growth_rate=4, stem_width=6,
                   growth_widths=tuple(range(1, 49)), transition_widths=(10, 20))
  chex.assert_shape(flat["params/conv0/kernel"], (3, 3, 3, 6))
  chex.assert_shape(flat["params/block1_layer1/conv1/kernel"], (1, 1, 6, 16))
  chex.assert_shape(flat["params/block1_layer2/conv1/kernel"], (1, 1, 7, 16))   # 6 + 1
  chex.assert_shape(flat["params/block1_layer16/conv2/kernel"], (3, 3, 16, 16))
  chex.assert_shape(flat["params/transition1/conv/kernel"], (1, 1, 6 + 136, 10))
  chex.assert_shape(flat["params/fc/kernel"], (20 + sum(range(33, 49)), 10))
  _, flat = shapes("densenet_bc100")                    # the default transitions: half
  chex.assert_shape(flat["params/transition2/conv/kernel"], (1, 1, 1000, 500))
  with pytest.raises(ValueError, match="config.model.transition_widths"):
    models.get_model("densenet_bc100", num_classes=10, transition_widths=(10,))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_default_block_widths_keep_the_params(name):
  # The same param paths and shapes, hence the same init draws (Flax folds
  # the path into the RNG); test_convert checks the forward against torchvision.
  layers, bottleneck = models.resnet._DEPTHS[int(name[6:])]
  standard = tuple((64 * 2**s,) * (1 + bottleneck) for s, n in enumerate(layers)
                   for _ in range(n))
  default = shapes(name)[1]
  for option in ((), standard):
    assert shapes(name, block_widths=option)[1] == default
  assert models.default_options(name)["block_widths"] == ()


def test_resnet_default_block_widths_are_bit_identical():
  x = jnp.zeros((1, 8, 8, 3))
  make = lambda **kw: models.get_model("resnet18", num_classes=10, stem="small", width=4, **kw)
  standard = ((4,),) * 2 + ((8,),) * 2 + ((16,),) * 2 + ((32,),) * 2
  a, b = quick_jit(lambda k: (make().init(k, x), make(block_widths=standard).init(k, x)))(
      rbg_key())
  chex.assert_trees_all_equal(a, b)


def test_a_slimmed_resnet18_builds_with_its_widths():
  widths = (3, 5, 7, 9, 11, 13, 15, 17)
  nested = tuple((w,) for w in widths)
  for option in (widths, nested):
    _, flat = shapes("resnet18", 10, 64, block_widths=option)
    for k, name in enumerate(["layer1_0", "layer1_1", "layer2_0", "layer2_1", "layer3_0",
                              "layer3_1", "layer4_0", "layer4_1"]):
      stage_width = 64 * 2 ** (k // 2)
      inputs = 64 * 2 ** max(0, (k - 1) // 2)               # the previous block's output
      chex.assert_shape(flat[f"params/{name}/conv1/kernel"], (3, 3, inputs, widths[k]))
      chex.assert_shape(flat[f"params/{name}/bn1/scale"], (widths[k],))
      chex.assert_shape(flat[f"params/{name}/conv2/kernel"], (3, 3, widths[k], stage_width))
  # A Bottleneck takes (conv1, conv2) per block, or the groups' ints in a row.
  _, flat = shapes("resnet50", 10, 32, block_widths=((5, 6),) + ((64, 64),) * 15)
  chex.assert_shape(flat["params/layer1_0/conv2/kernel"], (3, 3, 5, 6))
  chex.assert_shape(flat["params/layer1_0/conv3/kernel"], (1, 1, 6, 256))
  _, flat2 = shapes("resnet50", 10, 32, block_widths=(5, 6) + (64, 64) * 15)
  assert jax.tree.map(lambda s: s.shape, flat) == jax.tree.map(lambda s: s.shape, flat2)
  with pytest.raises(ValueError, match="config.model.block_widths=.*8 blocks"):
    models.get_model("resnet18", num_classes=10, block_widths=(3, 5))


@pytest.mark.parametrize("name", list(NEW))
def test_stages_cover_every_param(name):
  _, flat = shapes(name)
  stages = models.stages(name)
  hit = {stages(p[len("params/"):]) for p in flat if p.startswith("params/")}
  assert hit == set(range(stages.head + 1))
  assert stages.num_stages == {"vgg19_nr": 3, "vgg19_bn": 5, "vgg16_nr": 5, "resnet164": 3,
                               "densenet_bc100": 3, "densenet121": 4}[name]


@pytest.mark.parametrize("name,options,px", [
    ("vgg19_bn", {"widths": (6, 6, 8, 8) + (10,) * 12}, 32),
    ("resnet18", {"stem": "small", "width": 4}, 8)])
def test_pruned_and_slimmed_models_give_the_same_logits(name, options, px):
  model, flat = shapes(name, 10, px, **options)
  variables = filled(flat, seed=2)
  groups = models.channel_groups(name, model)
  params = variables["params"]
  rng = np.random.default_rng(4)
  keeps = [rng.permutation(flat[g.producer].shape[-1]) % 2 == 0 for g in groups]   # half
  masks = sp.channel_masks(params, groups, keeps)
  masked = {**variables, "params": sp.apply(params, masks)}
  slim_vars, widths = sp.slim(masked, masks, groups)
  slim = models.get_model(name, num_classes=10,
                          **{**options, models.width_option(name): tuple(widths)})
  x = np.random.default_rng(3).standard_normal((3, px, px, 3)).astype(np.float32)
  ref = quick_jit(model.apply)(masked, x)
  assert np.abs(ref - ref[0]).max() > 1e-3
  chex.assert_trees_all_close(quick_jit(slim.apply)(slim_vars, x), ref, atol=1e-4, rtol=1e-4)


def test_the_original_inits():
  # NR's VGG: BN scale 0.5, conv kernels N(0, 2 / (9 * out)), the classifier N(0, 0.01), bias 0.
  model = models.get_model("vgg19_nr", num_classes=500, widths=(32,) * 16)
  v = quick_jit(model.init)(rbg_key(), jnp.zeros((1, 8, 8, 3)))["params"]
  assert (np.asarray(v["bn5"]["scale"]) == 0.5).all() and not np.asarray(v["bn5"]["bias"]).any()
  kernel = np.asarray(v["conv5"]["kernel"])
  assert abs(kernel.std() / np.sqrt(2 / (9 * 32)) - 1) < 0.03
  assert abs(np.asarray(v["fc"]["kernel"]).std() / 0.01 - 1) < 0.03
  assert not np.asarray(v["fc"]["bias"]).any()
  # NR's ResNet-164 classifier: its init loop draws the 1x1 conv N(0, 2 / classes);
  # the bias stays PyTorch's default (built here at 1 block per stage, width 4).
  small = models.resnet.ResNet(layers=(1, 1, 1), bottleneck=True, num_classes=500,
                               stem="small", conv_init="fan_out",
                               fc_init="kaiming_normal_fan_out", width=4)
  fc = quick_jit(small.init)(rbg_key(), jnp.zeros((1, 8, 8, 3)))["params"]["fc"]
  assert abs(np.asarray(fc["kernel"]).std() / np.sqrt(2 / 500) - 1) < 0.05
  assert 0.9 / 8 < np.abs(np.asarray(fc["bias"])).max() <= 1 / 8      # fan_in 64
