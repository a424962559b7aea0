"""Helpers for notebooks (the ones in colab/ use them): data that works both
on a Debian machine and on a fresh Colab runtime, and showing a run's plots.

    from neurojax import notebook
    config = notebook.fashion_mnist(load_shipped("lenet5_fmnist"))
    ...
    notebook.show(f"{workdir}/curves.png")
"""

from __future__ import annotations

import os

from neurojax.data.sources import FASHION_MNIST_DIR


def fashion_mnist(config, tfds_dir: str = ""):
  """`config` reading Fashion-MNIST: Debian's IDX files (dataset-fashion-mnist)
  when they are installed, else TFDS's copy, downloaded and prepared as
  array_record in `tfds_dir` (TFDS's default: ~/tensorflow_datasets) on
  first use. Returns `config`."""
  d = config.data
  d.name = "fashion_mnist"
  if os.path.isdir(FASHION_MNIST_DIR):
    d.source, d.data_dir = "idx", ""
    return config
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("fashion_mnist", data_dir=tfds_dir or None, file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  d.source, d.data_dir = "tfds", tfds_dir
  return config


def show(*paths: str):
  """Displays PNG files in the notebook (or prints their paths outside one)."""
  try:
    from IPython.display import Image, display  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(*paths, sep="\n")
    return
  for path in paths:
    display(Image(filename=path))
