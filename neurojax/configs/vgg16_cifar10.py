"""VGG-16 (BN) on CIFAR-10, 30 epochs: kuangliu/pytorch-cifar's VGG('VGG16')
(`vgg16_cifar`, 14,728,266 params), the recipe of configs/resnet18_cifar10.py
with another model. The original repo reports 81.36 top-1.

    python -m neurojax.main --config=configs/vgg16_cifar10.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "resnet18_cifar10", "vgg16_cifar")
