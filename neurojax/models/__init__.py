"""Model registry: `get_model(name, num_classes=..., dtype=..., **options)`."""

from neurojax.models import lenet, resnet_cifar  # noqa: F401  (registers the models)
from neurojax.models.registry import DTYPES, default_options, get_model, names, options, register

__all__ = ["DTYPES", "default_options", "get_model", "names", "options", "register"]
