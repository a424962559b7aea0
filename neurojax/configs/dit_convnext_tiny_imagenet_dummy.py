"""`configs/dit_convnext_tiny_imagenet.py` on synthetic data: the whole recipe, no dataset.

Every piece of the ImageNet recipe (AdamW with accumulation, mixup/cutmix,
RandAugment, random erasing, drop path, label smoothing, EMA, bf16) on
synthetic 256x256 images of 1,000 classes, random-resized-cropped to 224:
a check of a TPU VM's set-up, and the step's images/s, before a 300-epoch
run. 40 steps of 512 (5 updates at the effective batch 4096), evaluated
with and without the EMA:

    python -m neurojax.main --config=configs/dit_convnext_tiny_imagenet_dummy.py --workdir=DIR

On a CPU, shrink it: `--config.batch_size=8 --config.data.image_size=32
--config.data.eval_resize=36 --config.data.synthetic_shape="(40,40,3)"
--config.eval_batch_size=16 --config.data.synthetic_eval_size=32`.
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "dit_convnext_tiny_imagenet")
  c.data.source = "synthetic"
  c.data.num_classes = 1000
  c.data.synthetic_shape = (256, 256, 3)
  c.data.synthetic_train_size = 512 * 40
  c.data.synthetic_eval_size = 1000
  c.num_epochs = 0.0
  c.num_steps = 40
  c.schedule.warmup_epochs = 0.5
  c.log_every_steps = 8
  c.eval_every_steps = 40
  c.checkpoint_every_steps = 40
  return c
