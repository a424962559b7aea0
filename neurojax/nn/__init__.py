"""neurojax layers for the brain-inspired methods (see each module)."""

from neurojax.nn.gating import Gate
from neurojax.nn.gating import GatedHead
from neurojax.nn.gating import GatedLinear
from neurojax.nn.gating import Kakuritsu
from neurojax.nn.gating import OnBackbone
from neurojax.nn.gating import gated_matmul
from neurojax.nn.quadratic import Quadratic
from neurojax.nn.quadratic import SpatialLayerNorm
from neurojax.nn.quadratic import quadratic
