"""ResNet-18 on CIFAR-10, 30 epochs: the small research repo's deterministic
baselines (the models its Bayesian and pruning variants are compared with).

The original repo reports, after 30 epochs, top-1 on the CIFAR-10 test set:
AlexNet 85.91, VGG 81.36, ResNet-18 94.18, ResNet-34 94.79. This file holds
the recipe for all four (`get_config(model)`); configs/alexnet_cifar10.py,
vgg16_cifar10.py and resnet34_cifar10.py are it with another model. For
TFDS `cifar10` prepared as array_record:

    tfds build cifar10 --file_format=array_record
    python -m neurojax.main --config=configs/resnet18_cifar10.py --workdir=DIR

- `resnet18`/`resnet34` with `stem="small"` (a 3x3/1 conv 64, no max-pool):
  kuangliu/pytorch-cifar's ResNet18/ResNet34, 11.17M and 21.28M params (the
  repo's own table gives 11.69M and 21.80M: torchvision's ImageNet models'
  counts, not those of the CIFAR models it trains); `alexnet_cifar`
  (pytorch-classification's, 2.47M) and `vgg16_cifar` (kuangliu's VGG16 with
  BN, 14.73M);
- SGD, momentum 0.9, weight decay 5e-4 (on every param, as PyTorch's SGD),
  batch 128, 30 epochs; lr 0.1, cosine to 0;
- random crop 32 with 4 px zero padding + flip; mean (0.4914, 0.4822,
  0.4465), std (0.2023, 0.1994, 0.2010);
- the test split is evaluated every epoch.
"""

from neurojax.config import base_config, cifar_data


def get_config(model="resnet18"):
  c = base_config(model)
  if model.startswith("resnet"):
    c.model.stem = "small"
  cifar_data(c)
  c.batch_size = 128
  c.num_epochs = 30.0
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = "cosine"
  c.schedule.lr = 0.1
  return c
