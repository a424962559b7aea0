"""`configs/kakuritsu_imagenet.py` on synthetic data: times the step with no input pipeline.

The original's `--dummy`. The same ResNet-152 (randomly initialised, so no
checkpoint is needed), the same heads, batch and optimizer, on 224x224x3
synthetic images of 1,000 classes without augmentation; 100 steps per head.
Each head's training images/s is in the run's table ("train step time
relative to W") and in results.json:

    python -m neurojax.main --config=configs/kakuritsu_imagenet_dummy.py --workdir=DIR

`--config.model.name=resnet50` or `--config.batch_size=256` time other sizes.
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "kakuritsu_imagenet")
  c.data.source = "synthetic"
  c.data.num_classes = 1000
  c.data.synthetic_shape = (224, 224, 3)
  c.data.synthetic_train_size = 64 * 25
  c.data.synthetic_eval_size = 500
  c.data.random_resized_crop = False
  c.data.flip = False
  c.data.eval_resize = 0
  c.num_epochs = 0.0
  c.num_steps = 100
  c.log_every_steps = 10
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  c.kakuritsu.backbone = "random"
  return c
