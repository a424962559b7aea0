"""ResNet-20 on CIFAR-10 with the Dit paper's CIFAR recipe (METHODS.md section 2).

The baseline of `configs/dit_resnet20_cifar10.py`, which differs only in
the model and the 10x lr of the quadratic term. For a TPU VM with TFDS
`cifar10` prepared as array_record:

    tfds build cifar10 --file_format=array_record
    python -m neurojax.main --config=configs/resnet20_cifar10.py --workdir=DIR

- the Dit code's CIFAR ResNet (`model.variant="dit_code"`: option-B 1x1
  conv + BN shortcuts, avg_pool(4) to a 256-d head), as the paper's
  numbers use; `--config.model.variant=he` is He et al.'s (option A,
  global pool, 64-d);
- SGD, momentum 0.9, weight decay 1e-4 (on every param, as the original),
  batch 128, 160 epochs; lr 0.1, x0.1 at epochs 80 and 120;
- random crop 32 with 4 px zero padding + flip; mean (0.4914, 0.4822,
  0.4465), std (0.2023, 0.1994, 0.2010);
- the test split is evaluated every epoch: the summary reports the final
  top-1 and, labelled as such, the best epoch's (the original reports the
  best).
"""

from neurojax.config import base_config, cifar_data


def get_config(model="resnet20"):
  c = base_config(model)
  c.model.variant = "dit_code"
  cifar_data(c)
  c.batch_size = 128
  c.num_epochs = 160.0
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "multistep"
  c.schedule.lr = 0.1
  c.schedule.milestones = (80, 120)
  c.schedule.gamma = 0.1
  if model.startswith("dit_"):
    c.optimizer.lr_groups = (("quadratic|ln_hw", 10.0),)   # 10x lr on Q and LN_hw
  return c
