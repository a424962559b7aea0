"""Neural Rejuvenation, NR's ResNet-164 on CIFAR-10: the original's README
command

    python cifar.py -d cifar10 -a resnet --depth 110 --epochs 300 --schedule 150 225 \\
        --gamma 0.1 --wd 1e-4 --nr-target 0.25 --nr-sparsity 1.5e-4

as a config (TFDS `cifar10` prepared as array_record first:
`tfds build cifar10 --file_format=array_record`):

    python -m neurojax.main --config=configs/nr_resnet164_cifar10.py --workdir=DIR

CIFAR-100 is `--config=configs/nr_resnet164_cifar10.py:cifar100` (the dataset,
and lambda 2.5e-4 as the original's results table).

- `resnet164`: its `--depth 110` builds 18 post-activation bottlenecks per
  stage (1.70M params); the stem, each branch's last conv and the
  downsample convs are fixed: never sparsified or dead, but the surgery
  widens them (the residual stream) by r too;
- sparsify with lambda 1.5e-4 (CIFAR-100: 2.5e-4) on the other BN scales
  at lr 0.1 until utilisation <= 0.25, then the surgery and 300 epochs of
  lr 0.1, x0.1 at 150 and 225 (the original pushes the schedule back by the
  sparsify epochs: the same); cross-attention off (its `set_nr_ca(False)`);
- SGD momentum 0.9, weight decay 1e-4 (also on the BN scales), batch 64;
- random crop 32 (padding 4) and flip; mean (0.4914, 0.4822, 0.4465), std
  (0.2023, 0.1994, 0.2010);
- the test split is evaluated every epoch; the summary reports the final
  top-1 of the prediction z_old + z_new and of each sub-network alone.

The paper's error: 5.13% on CIFAR-10, 23.84% on CIFAR-100.
"""

from neurojax.config import sibling_config


def get_config(dataset="cifar10"):
  return sibling_config(__file__, "nr_vgg19_cifar10", dataset, "resnet164")
