"""Dit-ResNet-20 (Dit-CNN, NeurIPS 2024) on CIFAR-10: the Dit paper's CIFAR recipe.

`configs/resnet20_cifar10.py` with model dit_resnet20: the first block of
stage 2 adds the quadratic term, out = (bn2(conv2(h)) + Q(LN_hw(h))) / 2,
and Q and LN_hw train at 10x the lr (`optimizer.lr_groups`). +33,280
params. Other depths: `--config.model.name=dit_resnet56` (any of
dit_resnet20/32/44/56/110).
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "resnet20_cifar10", "dit_resnet20")
