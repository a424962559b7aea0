"""Neural Rejuvenation, NR's DenseNet-BC-100 (growth 40) on CIFAR-10: the
original's README command

    python cifar.py -d cifar10 -a densenet --depth 100 --growthRate 40 --train-batch 64 \\
        --epochs 300 --schedule 150 225 --wd 1e-4 --gamma 0.1 --nr-target 0.25 \\
        --nr-sparsity 1.0e-4

as a config (TFDS `cifar10` prepared as array_record first:
`tfds build cifar10 --file_format=array_record`):

    python -m neurojax.main --config=configs/nr_densenet100_cifar10.py --workdir=DIR

CIFAR-100 is `--config=configs/nr_densenet100_cifar10.py:cifar100` (the
dataset, and lambda 2e-4 as the original's results table).

- `densenet_bc100`: a 3x3 stem conv of 80, three dense blocks of 16
  bottleneck layers (conv1 1x1 160, conv2 3x3 40, each conv with its own BN
  and ReLU, as NR builds it), transitions to half the channels (8.27M
  params); no conv is fixed: every BN scale is sparsified and every conv may
  lose or gain channels. A concatenated input keeps each layer's survivors
  then its new channels (the original lays out all old channels, then all
  new: the same network up to an order of channels);
- sparsify with lambda 1e-4 (CIFAR-100: 2e-4) at lr 0.1 until utilisation
  <= 0.25, then the surgery and 300 epochs of lr 0.1, x0.1 at 150 and 225;
  cross-attention off (its `set_nr_ca(False)`);
- the growth is r = sqrt(all / alive) as for the other models: the
  original's DenseNet takes int(sqrt(...)), which regrows nothing when
  utilisation ends between 0.25 and 1 (fixed here on purpose);
- SGD momentum 0.9, weight decay 1e-4 (also on the BN scales), batch 64;
- random crop 32 (padding 4) and flip; mean (0.4914, 0.4822, 0.4465), std
  (0.2023, 0.1994, 0.2010);
- the test split is evaluated every epoch; the summary reports the final
  top-1 of the prediction z_old + z_new and of each sub-network alone.

The paper's error: 3.40% on CIFAR-10, 18.59% on CIFAR-100 (4.12M and 4.31M
params after NR).
"""

from neurojax.config import sibling_config


def get_config(dataset="cifar10"):
  return sibling_config(__file__, "nr_vgg19_cifar10", dataset, "densenet_bc100")
