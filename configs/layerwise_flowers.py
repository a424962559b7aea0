"""Layer-wise reinitialisation on Flowers102: the DNR recipe, but generation g
re-draws every parameter (BN affine included, running statistics not) from
stage (4*g)//11 + 1 on, and the head. The original ran 8 generations
(`--config.generations.num_generations=8`); 11 here matches the other
methods' budget.

    python -m neurojax.main --config=configs/layerwise_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "layerwise")
