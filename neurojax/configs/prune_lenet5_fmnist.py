"""Han et al.'s iterative magnitude pruning of LeNet-5 (Caffe) on Fashion-MNIST.

Han et al. (NeurIPS 2015) pruned LeNet-5 12x on MNIST with no accuracy loss;
the original research repo went from 98.32% to 95.15% at 18x on MNIST.
Dense training is `configs/lenet5_fmnist.py` (15 epochs); then global
magnitude pruning of the conv and fc kernels to the `prune.targets`, each
round retrained for `prune.retrain.epochs` on `prune.retrain.schedule` (cosine
from 0.05) with the mask held fixed.
"""

from neurojax.config import schedule_config, sibling_config


def get_config():
  c = sibling_config(__file__, "lenet5_fmnist")
  c.method = "prune"
  c.sparsity.score = "magnitude"
  c.sparsity.selection = "global"
  c.prune.targets = (0.5, 0.75, 0.875, 0.917, 0.941, 0.96)
  c.prune.retrain.epochs = 4.0
  c.prune.retrain.schedule = schedule_config(name="cosine", lr=0.05)   # restarts every round
  return c
