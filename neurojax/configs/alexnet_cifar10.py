"""AlexNet on CIFAR-10, 30 epochs: pytorch-classification's
models/cifar/alexnet.py (`alexnet_cifar`: five convs, no BN, no FC layers,
2,472,266 params), the recipe of configs/resnet18_cifar10.py with another
model. The original repo reports 85.91 top-1.

That file's own note says that without BN the start lr should be 0.01:
so here, where the shared recipe has 0.1 (with BN).

    python -m neurojax.main --config=configs/alexnet_cifar10.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "resnet18_cifar10", "alexnet_cifar")
  c.schedule.lr = 0.01
  return c
