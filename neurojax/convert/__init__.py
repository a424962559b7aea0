"""Weights to and from PyTorch: `python -m neurojax.convert.torchvision --help`
(torchvision -> neurojax), `python -m neurojax.convert.export --help` (back)."""
