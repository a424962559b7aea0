"""Model registry: `get_model(name, num_classes=..., dtype=..., **options)`."""

from neurojax.models import (  # noqa: F401  (registers the models)
    bayesian, convnext, densenet, heads, lenet, rejuvenated, resnet, resnet_cifar, small_zoo,
    vgg)
from neurojax.models.registry import (DTYPES, ChannelGroup, Stages, all_channel_groups,
                                      channel_groups, group_width_options,
                                      build, default_options, get_model, is_backbone, names, options,
                                      register, spec, stages, width_option)

__all__ = ["DTYPES", "ChannelGroup", "Stages", "all_channel_groups", "build", "channel_groups",
           "group_width_options", "default_options",
           "get_model", "is_backbone", "names", "options", "register", "spec", "stages",
           "width_option"]
