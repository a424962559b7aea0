"""Weight importers. `python -m neurojax.convert.torchvision --help`."""
