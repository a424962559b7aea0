"""myKakuritsu on Fashion-MNIST: backbone, three heads and the eval matrix, here in minutes.

The experiment of `configs/kakuritsu_imagenet.py` (METHODS.md section 1) at
a size this CPU can run, from one command:

    python -m neurojax.main --config=configs/kakuritsu_fmnist.py --workdir=runs/kakuritsu_fmnist

1. the backbone: ResNet-18 (torchvision layout, small-image stem, width 8:
   64-d pooled features) trained on 1,000 images per class (10,000) for
   PRETRAIN epochs, in <workdir>/backbone;
2. the heads K, D and W (hidden 1000, as the original's), each trained for
   EPOCHS epochs on the frozen backbone, whose BatchNorm stays in train mode
   as in the original (`--config.kakuritsu.backbone_bn=running` for eval
   mode), with the original's SGD recipe (lr 0.01, momentum 0.9, weight
   decay 1e-4, batch 64);
3. the eval matrix on all 10,000 test images: each head under its own
   gates, switched off, Kakuritsu p=0.5 and Dropout 0.5.
"""

from neurojax.config import base_config, schedule_config

PRETRAIN, EPOCHS = 4, 3


def get_config():
  c = base_config("resnet18")
  c.method = "kakuritsu"
  c.model.stem = "small"
  c.model.width = 8
  c.data.per_class = 1000
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.batch_size = 64
  c.num_epochs = float(EPOCHS)           # per head
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "constant"
  c.schedule.lr = 0.01
  c.log_every_steps = 26
  c.kakuritsu.pretrain.epochs = float(PRETRAIN)
  c.kakuritsu.pretrain.schedule = schedule_config(name="cosine", lr=0.1)   # the backbone
  return c
