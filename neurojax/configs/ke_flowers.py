"""Knowledge Evolution (KE, CVPR 2021) on Flowers102: the DNR recipe with
the fixed "kels" split at split_rate 0.5 (each conv keeps its first half of
input and output channels, the stem all 3 image channels, fc its first half
of inputs), 11 generations x 200 epochs. As the original's
`split_reinitialize` (evolve_mode="rand"; layers/conv_type.py and
linear_type.py of the DNR and fortuitous_forgetting repos): the entries
outside the split are re-drawn from kaiming_uniform(a=sqrt(5)), PyTorch's
default layer init; BN and the fc bias are kept (SplitLinear re-draws its
weight only; `--config.generations.redraw=zero` is evolve_mode="zero").

    python -m neurojax.main --config=configs/ke_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "ke")
