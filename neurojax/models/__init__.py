"""Model registry: `get_model(name, num_classes=..., dtype=..., **options)`."""

from neurojax.models import convnext, lenet, resnet, resnet_cifar  # noqa: F401  (registers the models)
from neurojax.models.registry import (DTYPES, ChannelGroup, channel_groups, default_options,
                                      get_model, is_backbone, names, options, register,
                                      width_option)

__all__ = ["DTYPES", "ChannelGroup", "channel_groups", "default_options", "get_model", "is_backbone", "names",
           "options", "register", "width_option"]
