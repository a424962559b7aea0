"""Neural Rejuvenation's split model, built from a spec (an internal model:
not a `config.model.name` choice). Its `base` option is the widened model's
own spec; see `neurojax.nn.rejuvenation`."""

from __future__ import annotations

from neurojax.models import registry
from neurojax.nn.rejuvenation import Rejuvenated


@registry.register("rejuvenated", internal=True)
def rejuvenated(*, num_classes: int, dtype, base: dict, splits: tuple = (),
                head: tuple = ("fc", 0), cross_attention: bool = False) -> Rejuvenated:
  """`base` (a spec, its own num_classes and dtype) split into old and new
  channels at `splits` ((module path, old inputs, old outputs), ...; old
  inputs a count or [start, stop) ranges) and `head` ((module path, old
  inputs))."""
  del num_classes, dtype      # the base spec's
  return Rejuvenated(registry.build(base), splits, head, cross_attention)
