"""The small research repo's zoo (scnn, alexnet_cifar, vgg16_cifar; its CIFAR
ResNet-18/34 are resnet18/resnet34 with stem="small"): param counts and
shapes against the PyTorch definitions, forward passes, stages and the
head's dependence on num_classes."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from neurojax import models
from test_zoo import filled, n_params, quick_jit

# (name, image shape, options) -> params at 10 classes, as counted with the
# PyTorch definitions below.
COUNTS = [("scnn", (28, 28, 1), (), 44_426), ("scnn", (32, 32, 3), (), 62_006),
          ("alexnet_cifar", (32, 32, 3), (), 2_472_266),
          ("vgg16_cifar", (32, 32, 3), (), 14_728_266),
          ("resnet18", (32, 32, 3), (("stem", "small"),), 11_173_962),   # kuangliu's ResNet18
          ("resnet34", (32, 32, 3), (("stem", "small"),), 21_282_122)]   # and ResNet34
NEW = ["scnn", "alexnet_cifar", "vgg16_cifar"]


@functools.lru_cache(maxsize=None)
def shapes(name, image=(32, 32, 3), options=(), num_classes=10):
  """(model, its variables' shapes as '/'-joined paths), by jax.eval_shape."""
  model = models.get_model(name, num_classes=num_classes, **dict(options))
  v = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image)))
  return model, traverse_util.flatten_dict(v, sep="/")


def param_shapes(flat):
  return sorted(tuple(s.shape) for p, s in flat.items() if p.startswith("params/"))


def torch_definition(name, image):
  """The original's module (on the meta device), mirroring its code."""
  torch = pytest.importorskip("torch")
  nn = torch.nn
  with torch.device("meta"):
    if name == "scnn":      # the PyTorch CIFAR tutorial's Net
      side = ((image[0] - 4) // 2 - 4) // 2       # 4 at 28 px, 5 at 32 px
      return nn.Sequential(
          nn.Conv2d(image[2], 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
          nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if name == "alexnet_cifar":   # pytorch-classification models/cifar/alexnet.py
      return nn.Sequential(
          nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=5), nn.ReLU(),
          nn.MaxPool2d(kernel_size=2, stride=2),
          nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
          nn.MaxPool2d(kernel_size=2, stride=2),
          nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
          nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
          nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
          nn.MaxPool2d(kernel_size=2, stride=2), nn.Flatten(), nn.Linear(256, 10))
    if name == "vgg16_cifar":     # kuangliu/pytorch-cifar models/vgg.py VGG('VGG16')
      layers, c = [], 3
      for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]:
        if v == "M":
          layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
          layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
          c = v
      return nn.Sequential(*layers, nn.AvgPool2d(kernel_size=1, stride=1), nn.Flatten(),
                           nn.Linear(512, 10))
    # kuangliu's ResNet18/34: torchvision's BasicBlock ResNet with a 3x3/1 conv
    # (no bias) as conv1 and no max-pool.
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.resnet import BasicBlock, ResNet
    layers = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[name]
    net = ResNet(BasicBlock, layers, num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def torch_shapes(module):
  """Param shapes in our layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
  def ours(s):
    return (s[2], s[3], s[1], s[0]) if len(s) == 4 else s[::-1]
  return sorted(ours(tuple(p.shape)) for p in module.parameters())


@pytest.mark.parametrize("name,image,options,count", COUNTS,
                         ids=[f"{c[0]}-{c[1][0]}px" for c in COUNTS])
def test_param_counts_and_shapes_match_the_original(name, image, options, count):
  _, flat = shapes(name, image, options)
  assert n_params(flat) == count
  original = torch_definition(name, image)
  assert sum(p.numel() for p in original.parameters()) == count
  assert param_shapes(flat) == torch_shapes(original)


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet34", 21_797_672)])
def test_imagenet_resnets_are_torchvisions(name, count):
  """The original repo's reported ResNet counts are torchvision's (ImageNet
  stem, 1000 classes), not those of the CIFAR models it trains."""
  _, flat = shapes(name, (64, 64, 3), num_classes=1000)
  assert n_params(flat) == count
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  with torch.device("meta"):
    tv = getattr(torchvision.models, name)(weights=None)
  assert sum(p.numel() for p in tv.parameters()) == count
  assert param_shapes(flat) == torch_shapes(tv)


@pytest.mark.parametrize("name,image", [("scnn", (28, 28, 1)), ("scnn", (32, 32, 3)),
                                        ("alexnet_cifar", (32, 32, 3)),
                                        ("vgg16_cifar", (32, 32, 3))],
                         ids=["scnn-28px", "scnn-32px", "alexnet_cifar", "vgg16_cifar"])
def test_forward_gives_logits(name, image):
  model, flat = shapes(name, image)
  x = np.random.default_rng(1).standard_normal((2, *image)).astype(np.float32)
  logits = quick_jit(lambda v, x: model.apply(v, x, train=False))(filled(flat), x)
  chex.assert_shape(logits, (2, 10))
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name", NEW)
def test_stages_cover_every_param(name):
  _, flat = shapes(name)
  stages = models.stages(name)
  found = {stages(p[len("params/"):]) for p in flat if p.startswith("params/")}
  assert found == set(range(stages.head + 1))
  assert stages("conv1/kernel") == 0 and stages.num_stages >= 1


@pytest.mark.parametrize("name,options", [(n, ()) for n in NEW] +
                         [("resnet18", (("stem", "small"),))])
def test_num_classes_changes_only_the_head(name, options):
  _, ten = shapes(name, options=options)
  _, hundred = shapes(name, options=options, num_classes=100)
  assert ten.keys() == hundred.keys()
  changed = {p for p in ten if ten[p].shape != hundred[p].shape}
  head = models.stages(name).head
  assert changed == {p for p in ten if p.startswith("params/")
                     and models.stages(name)(p[len("params/"):]) == head}
  assert all(ten[p].shape[-1] == 10 and hundred[p].shape[-1] == 100 for p in changed)
