"""DNR on Stanford Dogs (120 breeds; TFDS `stanford_dogs`: 12,000 train and
8,580 test images), ResNet-18: the recipe of `dnr_flowers.py` (the DNR paper
trains every small dataset with it): torchvision's ResNet-18 with kaiming-
normal fan-in init, resize 256x256 then random-resized-crop 224 + flip
(centre crop 224 to evaluate), ImageNet mean/std, SGD momentum 0.9, weight
decay 1e-4, label smoothing 0.1, lr 0.256 at batch 32 with 5 warm-up epochs
then cosine, restarted each generation; 11 generations x 200 epochs; SNIP
keeps the 80% most salient conv/fc weights and re-draws the rest from
PyTorch's default layer init. An epoch is 375 steps; it evaluates every 50
epochs and checkpoints every 10.

    tfds build stanford_dogs --file_format=array_record --data_dir=D
    python -m neurojax.main --config=configs/dnr_dogs.py --workdir=DIR --config.data.data_dir=D

`:ke`, `:llf` or `:layerwise` after the file name gives the other
policies on the same data.
"""

from neurojax.config import sibling_config


def get_config(policy="dnr"):
  return sibling_config(__file__, "dnr_flowers", policy, "dogs")
