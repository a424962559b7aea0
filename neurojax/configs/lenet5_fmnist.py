"""Han et al.'s LeNet-5 (Caffe layout, 431k params) on Fashion-MNIST, 15 epochs.

The original PyTorch repo reports 87.96% (its LeNet) and 86.56% (SCNN) on
Fashion-MNIST. This recipe (SGD+momentum, cosine, label smoothing 0.1,
random crop with 2 px padding + flip) is the one whose test top-1 the README
reports.
"""

from neurojax.config import base_config


def get_config():
  c = base_config("lenet5")
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.num_epochs = 15.0
  c.schedule.lr = 0.05
  c.optimizer.weight_decay = 5e-4
  c.label_smoothing = 0.1
  return c
