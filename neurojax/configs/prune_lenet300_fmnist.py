"""Han et al.'s iterative magnitude pruning of LeNet-300-100 on Fashion-MNIST.

Han et al. (NeurIPS 2015) pruned LeNet-300-100 12x on MNIST with a 0.05 pt
loss; the original research repo lost 5.5 pts at 17x on MNIST. Dense
training is `configs/lenet300_fmnist.py`; then global magnitude pruning to
the `prune.targets` (fraction of kernel weights pruned), each round retrained
for `prune.retrain.epochs` with the mask held fixed, on a fresh cosine schedule
(`prune.retrain.schedule`) that restarts at the dense run's peak lr
(retraining at lr 0.01 lost 0.1-0.3 pt more). 0.917 pruned is
12x compression, 0.941 is 17x, 0.96 is 25x.
"""

from neurojax.config import schedule_config, sibling_config


def get_config():
  c = sibling_config(__file__, "lenet300_fmnist")
  c.method = "prune"
  c.sparsity.score = "magnitude"
  c.sparsity.selection = "global"
  c.prune.targets = (0.5, 0.75, 0.875, 0.917, 0.941, 0.96)
  c.prune.retrain.epochs = 8.0
  c.prune.retrain.schedule = schedule_config(name="cosine", lr=0.05)   # restarts every round
  return c
