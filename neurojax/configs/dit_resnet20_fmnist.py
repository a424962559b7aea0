"""Dit-ResNet-20 on Fashion-MNIST: `configs/resnet20_fmnist.py` with the
quadratic term in stage 2's first block and its 10x lr (the README's Dit
experiment)."""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "resnet20_fmnist", "dit_resnet20")
