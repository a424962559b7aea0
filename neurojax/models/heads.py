"""Heads on a backbone, built from a spec: myKakuritsu's K, D and W heads.

`on_backbone` is an internal model (not a `config.model.name` choice): its
`backbone` option is the backbone's own model spec (`models.spec(...)`,
num_classes=0), so a head's run rebuilds from its checkpoint alone.
"""

from __future__ import annotations

from neurojax.models import registry
from neurojax.nn.gating import Gate, GatedHead, OnBackbone


@registry.register("on_backbone", internal=True)
def on_backbone(*, num_classes: int, dtype, backbone: dict, hidden: int = 1000,
                weight_init: str = "torch", gate: tuple = ("none", 0.5, 0.5),
                freeze_backbone: bool = True, backbone_bn: str = "batch",
                gate_impl: str = "xla") -> OnBackbone:
  """`backbone` (a spec) -> GatedHead(hidden, num_classes, weight_init),
  trained under `gate` = (kind, p, rate) (`nn.gating.Gate`), its Kakuritsu
  gates computed by `gate_impl`."""
  return OnBackbone(registry.build(backbone),
                    GatedHead(hidden, num_classes, weight_init, dtype=dtype, impl=gate_impl),
                    Gate(*gate), freeze_backbone=freeze_backbone, backbone_bn=backbone_bn)
