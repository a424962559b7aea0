"""Dit-ConvNeXt-Small on ImageNet: `configs/dit_convnext_tiny_imagenet.py`'s
recipe (drop path 0.1 as METHODS.md gives it; ConvNeXt's own Small recipe uses
0.4: `--config.model.drop_path=0.4`). The plain ConvNeXt:
`--config.model.name=convnext_small`."""

from neurojax.config import sibling_config


def get_config():
  return sibling_config(__file__, "dit_convnext_tiny_imagenet", "dit_convnext_small")
