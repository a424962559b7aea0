"""A model with a mean-field Gaussian posterior on some of its Dense and
Conv layers, built from a spec (an internal model: not a
`config.model.name` choice). Its `base` option is the deterministic
model's own spec; see `neurojax.nn.bayes`."""

from __future__ import annotations

from neurojax.models import registry
from neurojax.nn.bayes import Bayesian, Posterior


@registry.register("bayesian", internal=True)
def bayesian(*, num_classes: int, dtype, base: dict, layers: tuple = (),
             posterior: tuple = (), mu_init: float = 0.2) -> Bayesian:
  """`base` (a spec, its own num_classes and dtype) with `layers` (module
  paths) Bayesian; `posterior` is `Posterior`'s fields as (name, value)
  pairs."""
  del num_classes, dtype      # the base spec's
  fields = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in posterior}
  return Bayesian(registry.build(base), layers, Posterior(**fields), mu_init)
