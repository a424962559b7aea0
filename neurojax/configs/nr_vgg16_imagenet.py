"""Neural Rejuvenation, NR's VGG-16 (`vgg_nr`) on ImageNet: the original's
two README commands (stage 1 `--nr-compress-only` until NR, stage 2
`--resume NR_vgg16_nr_0.5.pth.tar --nr-bn-target 0.5`) are one run here:

    python -m neurojax.main --config=configs/nr_vgg16_imagenet.py --workdir=DIR

(TFDS `imagenet2012` prepared first: the manual download, then
`tfds build imagenet2012 --file_format=array_record`.) Stop it at any time
and run the same command again: it resumes, before or after the surgery.

- `vgg16_nr`: 7x7/2 conv 64, a 3x3 conv 64, a 3x3/2 max-pool, then cfg E's
  convs (16 convs), global average pool, classifier (20.55M params);
- sparsify from lambda 0, +5e-5 after every epoch in which utilisation fell
  by less than 0.01, until utilisation <= 0.5; then neural rescaling to
  t = 0.5 (its --nr-bn-target 0.5), the surgery and 100 epochs of lr 0.1,
  x0.1 at 30, 60 and 90, with cross-attention (the ImageNet default);
- SGD momentum 0.9, weight decay 1e-4, batch 128 (the README's);
- RandomResizedCrop 224 + flip; resize 256 + centre crop 224 for the eval;
  ImageNet mean/std.

The paper's top-1 error: 23.11% (ResNet-50: configs/nr_resnet50_imagenet.py).
"""

from neurojax.config import base_config


def get_config(model="vgg16_nr"):
  """The recipe for `model` (configs/nr_resnet50_imagenet.py: resnet50)."""
  c = base_config(model)
  c.method = "rejuvenation"
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
  c.batch_size = 128
  c.eval_batch_size = 250
  c.num_epochs = 100.0                   # after NR
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "multistep"
  c.schedule.lr = 0.1
  c.schedule.milestones = (30, 60, 90)
  c.schedule.gamma = 0.1
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.rejuvenation.sparsity = 0.0
  c.rejuvenation.sparsity_growth = 5e-5
  c.rejuvenation.growth_threshold = 0.01
  c.rejuvenation.target = 0.5
  c.rejuvenation.cross_attention = True
  c.rejuvenation.rescale = 0.5
  c.rejuvenation.max_sparsify_epochs = 100
  return c
