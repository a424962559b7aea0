"""myKakuritsu on ImageNet: the original's whole results table from one command.

METHODS.md section 1. ResNet-152 with torchvision's V1 ImageNet weights,
its fc removed (2048-d pooled features), and the K, D and W heads
(2048 -> 1000 -> 1000, bias-free) trained on the frozen backbone, then the
eval matrix (each head under its own gates, switched off, Kakuritsu p=0.5
and Dropout 0.5) on the 50,000 validation images:

    python -m neurojax.convert.torchvision --arch resnet152 --weights IMAGENET1K_V1 \
        --out checkpoints/resnet152_imagenet1k_v1
    python -m neurojax.main --config=configs/kakuritsu_imagenet.py --workdir=DIR

(TFDS `imagenet2012` must be prepared first: it needs the manual download,
then `tfds build imagenet2012 --file_format=array_record`.)

The original's recipe: SGD, lr 0.01 (constant: no decay is specified),
momentum 0.9, weight decay 1e-4, batch 64, 20 epochs per head; the backbone's
BatchNorm in train mode (`--config.kakuritsu.backbone_bn=running` keeps it in
eval mode); RandomResizedCrop 224 + flip for training, resize 256 + centre
crop 224 for evaluation; ImageNet mean/std.

Its second script trains the whole network from scratch:
`--config.kakuritsu.train_backbone=True --config.kakuritsu.backbone= --config.schedule.lr=0.1`.
`configs/kakuritsu_imagenet_dummy.py` times the step on synthetic data.
"""

from neurojax.config import base_config


def get_config():
  c = base_config("resnet152")
  c.method = "kakuritsu"
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.eval_resize = 256
  c.data.random_resized_crop = True
  c.data.flip = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.num_threads = 32
  c.data.prefetch = 4
  c.batch_size = 64
  c.eval_batch_size = 250
  c.num_epochs = 20.0                    # per head
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "constant"
  c.schedule.lr = 0.01
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000        # about 7 minutes of a v3-8; an epoch is 20,018 steps
  c.kakuritsu.backbone = "checkpoints/resnet152_imagenet1k_v1"
  c.kakuritsu.hidden = 1000
  c.kakuritsu.p = 0.5
  c.kakuritsu.dropout = 0.5
  return c
