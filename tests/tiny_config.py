"""A seconds-long experiment on synthetic data, for the CLI tests.

`--config=tests/tiny_config.py:resnet20` picks another model."""

from neurojax.config import base_config


def get_config(model="lenet_300_100"):
  c = base_config(model)
  if model == "resnet18":
    c.model.stem = "small"
  c.data.source = "synthetic"
  c.data.num_classes = 10
  c.data.synthetic_shape = (8, 8, 1)
  c.data.synthetic_train_size = 512
  c.data.synthetic_eval_size = 100
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 200
  c.schedule.lr = 0.05
  c.log_every_steps = 20
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 50
  c.keep_checkpoints = 3
  c.progress = False
  return c
