"""Later-layer forgetting (LLF, "fortuitous forgetting", ICLR 2022) on
Flowers102: the DNR recipe, but every generation re-draws everything from
layer4 on (its convs, downsample and the fc), 11 generations x 200 epochs.

    python -m neurojax.main --config=configs/llf_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "llf")
