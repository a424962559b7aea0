"""Bayes by Backprop on ResNet-34 (the CIFAR stem: a 3x3/1 conv 64, no
max-pool; 21.28M weights, every conv and the fc Bayesian, BatchNorm
deterministic) on CIFAR-10: the original personal research repo's 86.21%
row. For TFDS `cifar10` prepared as array_record:

    tfds build cifar10 --file_format=array_record
    python -m neurojax.main --config=configs/bbb_resnet34_cifar10.py --workdir=DIR

- the deterministic recipe of configs/resnet34_cifar10.py (30 epochs,
  batch 128, crop + flip) with Adam at lr 1e-3, cosine, no weight decay;
- the scale-mixture prior (pi 0.5, e^-1, e^-6), KL / 50,000 (N_train);
  flipout (one weight draw per batch, decorrelated across the batch);
- mu starts at the model's own init (kaiming, `bayes.mu_init = 0`: U(-0.2,
  0.2) on every layer of a 34-layer net is a poor start), rho ~ U(-5, -4);
- the test prediction averages 10 posterior draws.
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "resnet18_cifar10", "resnet34")
  c.method = "bayes"
  c.optimizer.name = "adam"
  c.optimizer.weight_decay = 0.0
  c.schedule.lr = 1e-3
  c.bayes.estimator = "flipout"
  c.bayes.mu_init = 0.0
  c.bayes.eval_samples = 10
  return c
