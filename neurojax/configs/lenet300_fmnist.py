"""LeNet-300-100 (784-300-100-10 MLP, 267k params) on Fashion-MNIST, 15 epochs.

The dense baseline for the pruning experiments (Han et al. 2015 prune this
net 12x on MNIST). The README reports its test top-1.
"""

from neurojax.config import base_config


def get_config():
  c = base_config("lenet_300_100")
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.num_epochs = 15.0
  c.schedule.lr = 0.05
  c.optimizer.weight_decay = 1e-4
  c.label_smoothing = 0.1
  c.log_every_steps = 100
  return c
