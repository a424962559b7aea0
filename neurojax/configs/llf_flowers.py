"""Later-layer forgetting (LLF, "fortuitous forgetting", ICLR 2022) on
Flowers102: the DNR recipe, but every generation re-draws everything from
layer4 on (its convs, downsample and the fc weight), 11 generations x 200
epochs. As fortuitous_forgetting's llf_ke/train_KE_cls.py: the masks of
every parameter from `--reset_layer_name=layer4` on are zeroed, then
`split_reinitialize` re-draws the masked conv and fc weights from
kaiming_uniform(a=sqrt(5)); BN is kept (`--reset_bn` off) and so is the fc
bias (`SplitLinear.split_reinitialize` re-draws the weight alone;
`--config.generations.llf_bias=True` re-draws it too).

    python -m neurojax.main --config=configs/llf_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "llf")
