"""Knowledge Evolution (KE, CVPR 2021) on Flowers102: the DNR recipe with
the fixed "kels" split at split_rate 0.5 (each conv keeps its first half of
input and output channels, the stem all 3 image channels, fc its first half
of inputs), 11 generations x 200 epochs.

    python -m neurojax.main --config=configs/ke_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "ke")
