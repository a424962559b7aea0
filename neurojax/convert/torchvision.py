"""Import torchvision ResNet and ConvNeXt weights into neurojax's models.

    python -m neurojax.convert.torchvision --arch resnet152 --weights IMAGENET1K_V1 --out DIR
    python -m neurojax.convert.torchvision --arch resnet50 --state-dict resnet50.pth --out DIR
    python -m neurojax.convert.torchvision --arch convnext_tiny --weights IMAGENET1K_V1 --out DIR

`--weights` loads through torchvision (it downloads, so it needs the
internet); `--state-dict` reads a saved state_dict with
`torch.load(..., weights_only=True)`, which never unpickles code. A
"module." prefix (nn.DataParallel) and a {"state_dict": ...} wrapper are
accepted. Every key must map onto the model and every model variable must be
filled, with matching shapes; anything else is an error naming the key.

DIR gets an orbax checkpoint of {"params", "batch_stats"} (`variables/`)
and `meta.json` (arch, num_classes, source); `load(DIR)` reads them back,
and a config names DIR as its backbone init. torch and torchvision are the
optional extra `neurojax[convert]`; nothing else in neurojax imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import jax
import numpy as np

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
         "convnext_tiny", "convnext_small", "convnext_base")


class ConversionError(ValueError):
  """A state_dict that does not fit the model (the message names the key)."""


def _classifier(arch: str) -> str:
  return "classifier.2.weight" if arch.startswith("convnext") else "fc.weight"


# Our leaf name -> torchvision's, for the ResNets (params and batch_stats).
_RESNET_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}


def torch_key(path: tuple[str, ...], arch: str) -> str | None:
  """(collection, module..., leaf) of a neurojax variable -> its torchvision
  state_dict key, or None where torchvision has no such tensor. The one
  mapping between the two layouts: `convert_state_dict` (torchvision ->
  neurojax) inverts it over the model's variables, `export_state_dict`
  applies it. ResNets: `layer1_0/conv1/kernel` -> `layer1.0.conv1.weight`,
  `downsample_conv`/`downsample_bn` -> `downsample.0`/`.1`, BN `mean`/`var`
  -> `running_mean`/`running_var`; other module names are kept, joined by
  dots (the CIFAR ResNets' `stage1_block0.conv1.weight`). ConvNeXt:
  `neurojax.models.convnext.torchvision_key`."""
  collection, *modules, leaf = path
  if arch.startswith("convnext"):
    from neurojax.models.convnext import torchvision_key  # pylint: disable=g-import-not-at-top
    return torchvision_key(tuple(modules), leaf) if collection == "params" else None
  if (collection, leaf) not in {("params", "kernel"), ("params", "scale"), ("params", "bias"),
                                ("batch_stats", "mean"), ("batch_stats", "var")}:
    return None
  module = re.sub(r"^(layer\d+)_(\d+)", r"\1.\2", ".".join(modules))
  module = module.replace("downsample_conv", "downsample.0").replace("downsample_bn",
                                                                     "downsample.1")
  return f"{module}.{_RESNET_LEAVES[leaf]}"


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:                  # OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 3:                  # ConvNeXt's layer scale [C, 1, 1] -> [C]
    return array.reshape(-1)
  if array.ndim == 2:                  # [out, in] -> [in, out]
    return array.T
  return array


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  """The inverse of `_to_flax`, for a leaf named `leaf`."""
  if array.ndim == 4:                  # HWIO -> OIHW
    return array.transpose(3, 2, 0, 1)
  if leaf == "gamma":                  # [C] -> ConvNeXt's layer scale [C, 1, 1]
    return array.reshape(-1, 1, 1)
  if array.ndim == 2:                  # [in, out] -> [out, in]
    return array.T
  return array


def _flat_paths(tree) -> dict:
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]}


def _torch_keys(paths, arch: str) -> dict[str, tuple[str, ...]]:
  """{torchvision key: our path} over `paths` (those that have a key)."""
  keys = {}
  for path in paths:
    key = torch_key(path, arch)
    if key is not None:
      assert key not in keys, f"{key} maps onto both {keys[key]} and {path}"
      keys[key] = path
  return keys


def convert_state_dict(state_dict: dict, model, image_shape=(224, 224, 3),
                       arch: str = "resnet") -> dict:
  """The variables ({"params"} and, for ResNets, {"batch_stats"}) of
  `model` from a torchvision `arch` (a ResNet or ConvNeXt) state_dict of
  numpy arrays (or tensors); raises ConversionError."""
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, *image_shape)))
  flat = _flat_paths(expected)
  keys = _torch_keys(flat, arch)
  out, unexpected = {}, []
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    target = keys.get(key)
    if target is None:
      unexpected.append(key)
      continue
    array = _to_flax(value)
    if array.shape != flat[target].shape:
      raise ConversionError(
          f"{key}: shape {tuple(value.shape)} does not fit {'/'.join(target)} "
          f"{tuple(flat[target].shape)} (after the layout change {tuple(array.shape)}); "
          "is --arch right?")
    out[target] = array.astype(flat[target].dtype)
  if unexpected:
    raise ConversionError(f"unexpected key(s) for this model: {', '.join(unexpected[:10])}"
                          + (" ..." if len(unexpected) > 10 else "") + "; is --arch right?")
  missing = [".".join(t) for t in flat if t not in out]
  if missing:
    raise ConversionError(f"missing from the state_dict: {', '.join(missing[:10])}"
                          + (" ..." if len(missing) > 10 else ""))
  variables: dict = {}
  for path, array in out.items():
    node = variables
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = array
  return variables


def read_state_dict(path: str) -> dict:
  """A state_dict from a .pth file, read with weights_only=True."""
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"cannot read {path} as a PyTorch state_dict "
                          f"(torch.load with weights_only=True): {e}") from None
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict "
                          "(a dict of parameter name -> tensor)")
  return {k.removeprefix("module."): v for k, v in obj.items()}


def save(out: str, variables: dict, meta: dict) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(out, "variables"), variables, force=True)
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)


def load(directory: str) -> tuple[dict, dict]:
  """(variables, meta) written by this converter."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, "meta.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{directory} is not a converted checkpoint (no meta.json); "
                            "write one with python -m neurojax.convert.torchvision")
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(directory, "variables"))
  return variables, meta


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m neurojax.convert.torchvision",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", required=True, choices=ARCHS)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--weights", help="a torchvision weights name, e.g. IMAGENET1K_V1")
  source.add_argument("--state-dict", help="a .pth state_dict file")
  parser.add_argument("--out", required=True, help="the directory to write")
  args = parser.parse_args(argv)
  from neurojax import models  # pylint: disable=g-import-not-at-top
  from neurojax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:       # before a download or a conversion: --out must be a directory we can write
    created = workdir_lib.check_writable_dir(args.out, "--out")
  except workdir_lib.WorkdirError as e:
    sys.exit(f"neurojax.convert: {e}")
  try:
    if args.weights:
      import torchvision  # pylint: disable=g-import-not-at-top
      state_dict = torchvision.models.get_model(args.arch, weights=args.weights).state_dict()
    else:
      state_dict = read_state_dict(args.state_dict)
    classifier = _classifier(args.arch)
    if classifier not in state_dict:
      raise ConversionError(f"missing from the state_dict: {classifier}; is --arch right?")
    num_classes = int(state_dict[classifier].shape[0])
    variables = convert_state_dict(state_dict, models.get_model(args.arch,
                                                                num_classes=num_classes),
                                   arch=args.arch)
  except ConversionError as e:
    workdir_lib.remove_empty_dirs(created)
    sys.exit(f"neurojax.convert: {e}")
  meta = {"arch": args.arch, "num_classes": num_classes,
          "source": args.weights or os.path.abspath(args.state_dict)}
  try:
    save(args.out, variables, meta)
  except OSError as e:
    sys.exit(f"neurojax.convert: {workdir_lib.os_error_message(e, args.out, '--out')}")
  count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {args.out}: {args.arch}, {num_classes} classes, {count:,} params")


if __name__ == "__main__":
  main()
