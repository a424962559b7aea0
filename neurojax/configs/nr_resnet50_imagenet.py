"""Neural Rejuvenation, ResNet-50 on ImageNet, with the original's ImageNet
recipe (its README gives the commands for VGG-16: stage 1
`--nr-compress-only` until NR, stage 2 `--resume NR_..._0.5.pth.tar
--nr-bn-target 0.5`; the same here with `-a resnet50`), as one run:

    python -m neurojax.main --config=configs/nr_resnet50_imagenet.py --workdir=DIR

(TFDS `imagenet2012` prepared first: the manual download, then
`tfds build imagenet2012 --file_format=array_record`.) Stop it at any time
and run the same command again: it resumes, before or after the surgery.

- `resnet50` in torchvision's layout (25.56M params); the stem, each
  branch's last conv and the downsample convs are fixed (never sparsified
  or dead; the surgery widens the residual stream by r too);
- sparsify from lambda 0, +5e-5 after every epoch in which utilisation fell
  by less than 0.01, until utilisation <= 0.5; then neural rescaling to
  t = 0.5 (its --nr-bn-target 0.5), the surgery and 100 epochs of lr 0.1,
  x0.1 at 30, 60 and 90, with cross-attention (the ImageNet default);
- SGD momentum 0.9, weight decay 1e-4, batch 128 (the README's for VGG-16;
  the script's default is 256);
- RandomResizedCrop 224 + flip; resize 256 + centre crop 224 for the eval;
  ImageNet mean/std.

The paper's top-1 error: 22.93% (ResNet-18 28.86, ResNet-34 25.77, ResNet-101
21.22: --config.model.name=resnet18|34|101).
"""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "nr_vgg16_imagenet", "resnet50")
