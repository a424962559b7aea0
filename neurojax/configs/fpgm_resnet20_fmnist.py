"""FPGM structured filter pruning of ResNet-20 on Fashion-MNIST.

He et al. (CVPR 2019) prune the filters nearest the geometric median of
each layer. Here: train the CIFAR-style ResNet-20 (269k params, option-A
shortcuts) densely on a balanced 10k-image subset (sized for a CPU), then
prune the inner channels of every residual block
(conv1's filters, with their BN and conv2's inputs) to the `prune.targets`
(fraction of each block's channels pruned), retraining `prune.retrain.epochs`
(cosine from 0.05) after each step. At the end the pruned channels are cut
out: the slimmed dense model is written to <workdir>/slim and must give the
same logits.
"""

from neurojax.config import base_config, schedule_config


def get_config():
  c = base_config("resnet20")
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.data.per_class = 1000       # 10k training images: XLA:CPU runs ResNet-20 at ~150 img/s
  c.num_epochs = 10.0
  c.eval_every_steps = 395      # every 5 epochs (and at the end of every phase)
  c.schedule.lr = 0.1
  c.optimizer.weight_decay = 5e-4
  c.label_smoothing = 0.1
  c.method = "prune"
  c.sparsity.score = "fpgm"
  c.sparsity.selection = "channels"
  c.prune.targets = (0.3, 0.5)
  c.prune.retrain.epochs = 3.0
  c.prune.retrain.schedule = schedule_config(name="cosine", lr=0.05)   # restarts every round
  return c
