"""ResNet-34 on CIFAR-10, 30 epochs: kuangliu/pytorch-cifar's ResNet34
(`resnet34` with `stem="small"`, 21,282,122 params), the recipe of
configs/resnet18_cifar10.py with another model. The original repo reports
94.79 top-1 (ResNet-18: 94.18).

    python -m neurojax.main --config=configs/resnet34_cifar10.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "resnet18_cifar10", "resnet34")
