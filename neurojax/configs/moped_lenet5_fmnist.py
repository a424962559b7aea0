"""MOPED (Krishnan, Subedar and Tickoo, AAAI 2020): LeNet-5 on
Fashion-MNIST, its posterior and prior from a trained deterministic LeNet-5.

    python -m neurojax.main --config=configs/lenet5_fmnist.py --workdir=runs/lenet5
    python -m neurojax.main --config=configs/moped_lenet5_fmnist.py --workdir=runs/moped \\
        --config.bayes.init_from=runs/lenet5

- mu = w (the deterministic weights, exactly), sigma = delta * |w| with
  delta 0.1, and the paper's prior N(w, (delta |w|)^2) (`bayes.prior =
  "gaussian"` with `bayes.prior_sigma = 1` is bayesian-torch's other code
  path, N(0, 1)); the BN-free LeNet-5's every conv and fc is Bayesian;
- loss CE + KL / N_train (the KL in closed form); 5 epochs of Adam at lr
  1e-4, cosine (a fine-tune, not training from scratch);
- the test prediction averages 10 posterior draws; the summary reports
  top-1, NLL, ECE, Brier, entropy, mutual information and reliability.png.

The original personal research repo's MOPED column was never run.
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "bbb_lenet5_fmnist")
  c.bayes.prior = "moped"
  c.bayes.delta = 0.1
  c.bayes.init_from = "runs/lenet5"
  c.num_epochs = 5.0
  c.schedule.lr = 1e-4
  return c
