"""neurojax: brain-inspired training methods in JAX/Flax.

Subpackages: `models` (registry by name), `data` (sources and grain
pipelines), `train` (state, steps, loop, checkpoints), `methods` (one driver
per paper) and `parallel` (mesh and multi-process set-up).
"""

__version__ = "0.1.0"
