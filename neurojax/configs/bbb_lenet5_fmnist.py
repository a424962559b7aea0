"""Bayes by Backprop: Han et al.'s LeNet-5 (431k weights, every conv and fc
Bayesian) on Fashion-MNIST.

    python -m neurojax.main --config=configs/bbb_lenet5_fmnist.py --workdir=runs/bbb

The original personal research repo's BBB LeNet sits at chance (11.46% on
Fashion-MNIST, 9.8% on MNIST): it divides the KL by the batch, not the
training set, and initialises badly. Here, as Blundell et al. (ICML 2015):

- a mean-field Gaussian posterior, sigma = softplus(rho), mu ~ U(-0.2, 0.2),
  rho ~ U(-5, -4); one weight draw per batch (the reparameterisation
  trick; `--config.bayes.estimator=flipout` or `local` for less variance);
- the scale-mixture prior 0.5 N(0, e^-2) + 0.5 N(0, e^-12), its KL by Monte
  Carlo on the weights drawn; loss CE + KL / 60,000 (N_train, from the data);
- Adam lr 1e-3, cosine, batch 128, 15 epochs, crop (2 px) + flip; no
  weight decay and no label smoothing (the prior and the likelihood are
  the whole objective);
- the test prediction averages the softmax of 10 posterior draws; the
  summary reports top-1, NLL, ECE (15 bins), Brier, entropy, mutual
  information and writes reliability.png.
"""

from neurojax.config import base_config


def get_config():
  c = base_config("lenet5")
  c.method = "bayes"
  c.data.crop_padding = 2
  c.data.flip = True
  c.data.mean = (0.2860,)
  c.data.std = (0.3530,)
  c.num_epochs = 15.0
  c.optimizer.name = "adam"
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "cosine"
  c.schedule.lr = 1e-3
  c.label_smoothing = 0.0
  c.bayes.eval_samples = 10
  return c
