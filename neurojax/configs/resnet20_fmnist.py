"""ResNet-20 on Fashion-MNIST with the Dit CIFAR recipe, sized for a CPU.

The baseline of `configs/dit_resnet20_fmnist.py` (same recipe, the model
and the quadratic term's 10x lr aside), run in the README's Dit experiment.
From `configs/resnet20_cifar10.py`, changed for 2 CPU cores:
- He et al.'s ResNet-20 (`model.variant="he"`: option-A shortcuts, global
  pool), on 28x28 grey images (stage 2 is 14x14, so LN_hw has 2 x 196
  params);
- a balanced 10k-image training subset, 12 epochs, lr x0.1 at epochs 6 and
  9 (the 160-epoch recipe's 50% and 75%); crop with 2 px padding + flip;
- the full 10k test split is evaluated every epoch.
"""

from neurojax.config import sibling_config


def get_config(model="resnet20"):
  c = sibling_config(__file__, "resnet20_cifar10", model)
  c.model.variant = "he"
  c.data.source = "idx"
  c.data.name = "fashion_mnist"
  c.data.per_class = 1000
  c.data.crop_padding = 2
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.num_epochs = 12.0
  c.schedule.milestones = (6, 9)
  return c
