"""Neural Rejuvenation on Fashion-MNIST, sized for a 2-core CPU.

NR's CIFAR VGG-19 (`vgg19_nr`: 16 convs, 2 max-pools, BN scale init 0.5,
global-average-pooled classifier) at 1/16 of its widths (4 .. 32 channels,
79k params), on a 5,000-image balanced subset (500 per class) at 28 px
with random crop (padding 2) and flip, tested on all 10,000 test images.

The recipe is the original CIFAR script's (cifar.py): SGD momentum 0.9,
weight decay 1e-4, lr 0.1 then x0.1 at 1/2 and 3/4 of the epochs, batch 64,
cross-attention off, target utilisation 0.25. Scaled for this CPU:
- 20 epochs after NR (the original: 300, milestones 150 and 225);
- lambda 5e-3 (the original: 1.5e-4): with 78 steps per epoch (CIFAR at
  batch 64: 782) utilisation then reaches 0.25 in about 6 sparsify epochs.

    python -m neurojax.main --config=configs/nr_fmnist.py --workdir=runs/nr_fmnist
"""

from neurojax.config import base_config
from neurojax.models.vgg import NR_CIFAR, conv_widths

EPOCHS = 20


def get_config():
  c = base_config("vgg19_nr")
  c.model.widths = tuple(w // 16 for w in conv_widths(NR_CIFAR))
  c.method = "rejuvenation"
  c.data.per_class = 500
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.batch_size = 64
  c.num_epochs = float(EPOCHS)           # after NR
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "multistep"
  c.schedule.lr = 0.1
  c.schedule.milestones = (EPOCHS // 2, 3 * EPOCHS // 4)
  c.schedule.gamma = 0.1
  c.checkpoint_every_steps = 0           # every epoch
  c.rejuvenation.sparsity = 5e-3
  c.rejuvenation.target = 0.25
  c.rejuvenation.max_sparsify_epochs = 30
  return c
