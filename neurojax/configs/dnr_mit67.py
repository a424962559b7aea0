"""DNR on MIT Indoor-67 (67 scene classes; the standard split of 80 train
and 20 test images per class: 5,360 and 1,340), ResNet-18, read from image
folders: the recipe of `dnr_flowers.py` (the DNR paper trains every small
dataset with it): torchvision's ResNet-18 with
kaiming-normal fan-in init, resize 256x256 then random-resized-crop 224 +
flip (centre crop 224 to evaluate), ImageNet mean/std, SGD momentum 0.9,
weight decay 1e-4, label smoothing 0.1, lr 0.256 at batch 32 with 5 warm-up
epochs then cosine, restarted each generation; 11 generations x 200 epochs;
SNIP keeps the 80% most salient conv/fc weights and re-draws the rest from
PyTorch's default layer init. An epoch is 167 steps; it evaluates every 50
epochs and checkpoints every 10.

TFDS has no MIT67, so it reads an ImageFolder tree: `D/train/<class>/*.jpg`
and `D/test/<class>/*.jpg`, with the images of the dataset's TrainImages.txt
and TestImages.txt (classes are the sorted folder names of train, as
torchvision's ImageFolder numbers them; a few MIT67 files are GIFs saved as
.jpg: a file PIL cannot decode is named in the error).

    python -m neurojax.main --config=configs/dnr_mit67.py --workdir=DIR --config.data.data_dir=D

`:ke`, `:llf` or `:layerwise` after the file name gives the other
policies on the same data.
"""

from neurojax.config import sibling_config


def get_config(policy="dnr"):
  return sibling_config(__file__, "dnr_flowers", policy, "mit67")
