"""The long baseline on Flowers102: one generation as long as the generational
methods' total (11 x 200 = 2,200 epochs), with the DNR recipe otherwise.

    python -m neurojax.main --config=configs/long_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "dnr_flowers", "none")
  c.num_epochs = 200.0 * c.generations.num_generations
  c.generations.num_generations = 1
  return c
