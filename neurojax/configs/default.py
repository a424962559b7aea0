"""The `make run` job: Han et al.'s LeNet-5 on Fashion-MNIST (60k/10k).

The same recipe as `configs/lenet5_fmnist.py`, shortened to 3 epochs so it
finishes in a few minutes on 2 CPU cores. Fashion-MNIST comes from Debian's
`dataset-fashion-mnist` package, so this runs with no download.
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "lenet5_fmnist")
  c.num_epochs = 3.0
  return c
