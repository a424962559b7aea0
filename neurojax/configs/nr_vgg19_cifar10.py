"""Neural Rejuvenation, NR's VGG-19 (BN) on CIFAR-10: the original's README
command

    python cifar.py -d cifar10 -a vgg19_bn --epochs 300 --schedule 150 225 --gamma 0.1 \\
        --nr-target 0.25 --nr-sparsity 1.5e-4

as a config (TFDS `cifar10` prepared as array_record first:
`tfds build cifar10 --file_format=array_record`):

    python -m neurojax.main --config=configs/nr_vgg19_cifar10.py --workdir=DIR

CIFAR-100 is `--config=configs/nr_vgg19_cifar10.py:cifar100` (the dataset,
and lambda 3e-4 as the original's results table).

- `vgg19_nr`: NR's "VGG-19-BN" (16 convs, 2 max-pools, BN scale init 0.5,
  global-average-pooled classifier; 20.04M params);
- sparsify with lambda 1.5e-4 (CIFAR-100: 3e-4) on every BN scale (VGG has no fixed layer)
  at lr 0.1 until utilisation <= 0.25, then the surgery and 300 epochs of
  lr 0.1, x0.1 at 150 and 225 (the original pushes the schedule back by the
  sparsify epochs: the same); cross-attention off (its `set_nr_ca(False)`);
- SGD momentum 0.9, weight decay 1e-4 (also on the BN scales), batch 64;
- random crop 32 (padding 4) and flip; mean (0.4914, 0.4822, 0.4465), std
  (0.2023, 0.1994, 0.2010);
- the test split is evaluated every epoch; the summary reports the final
  top-1 of the prediction z_old + z_new and of each sub-network alone.

The paper's error: 4.19% on CIFAR-10, 21.53% on CIFAR-100.
"""

from neurojax.config import base_config, cifar_data


# lambda by model and dataset: the original's results table
SPARSITY = {("vgg19_nr", "cifar10"): 1.5e-4, ("vgg19_nr", "cifar100"): 3e-4,
            ("resnet164", "cifar10"): 1.5e-4, ("resnet164", "cifar100"): 2.5e-4,
            ("densenet_bc100", "cifar10"): 1e-4, ("densenet_bc100", "cifar100"): 2e-4}


def get_config(dataset="cifar10", model="vgg19_nr"):
  """The recipe for `model` (configs/nr_resnet164_cifar10.py: resnet164,
  configs/nr_densenet100_cifar10.py: densenet_bc100)."""
  c = base_config(model)
  c.method = "rejuvenation"
  cifar_data(c, dataset)
  c.batch_size = 64
  c.num_epochs = 300.0                   # after NR
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "multistep"
  c.schedule.lr = 0.1
  c.schedule.milestones = (150, 225)
  c.schedule.gamma = 0.1
  c.checkpoint_every_steps = 0           # every epoch
  c.rejuvenation.sparsity = SPARSITY[model, dataset]
  c.rejuvenation.target = 0.25
  c.rejuvenation.cross_attention = False
  c.rejuvenation.max_sparsify_epochs = 300
  return c
