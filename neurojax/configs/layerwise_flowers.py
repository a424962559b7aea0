"""Layer-wise reinitialisation on Flowers102: the DNR recipe, but generation g
re-draws every parameter (BN affine included, running statistics not) from
stage (4*g)//11 + 1 on, and the head. The original ran 8 generations
(`--config.generations.num_generations=8`); 11 here matches the other
methods' budget. As the DNR repo's train_KE_cls_LW.py (defaults): the
reset parameters are copied from a newly built model (`redraw="original"`
is the model's own init: kaiming-normal convs and fc, BN scale 1, bias 0,
the fc bias PyTorch's default); no rescaling of the kept weights
(`--no_rescale_weights` defaults to True) and no layer-wise normalisation
(`--no_normalize_LW` True).

    python -m neurojax.main --config=configs/layerwise_flowers.py --workdir=DIR
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dnr_flowers", "layerwise")
