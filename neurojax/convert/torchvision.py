"""Import torchvision ResNet and ConvNeXt weights into neurojax's models
(and export them back: `export_state_dict`, `python -m neurojax.convert.export`).

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


# Exported with torchvision's keys: `torchvision.models.get_model(arch)` loads them.
TORCHVISION_ARCHS = ARCHS
# No torchvision class (the CIFAR ResNets, ResNet-164): a plain state_dict in
# PyTorch's layouts and leaf names, keyed by `torch_key` (`stage1_block0.conv1.weight`).
PLAIN_ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164")
EXPORT_ARCHS = TORCHVISION_ARCHS + PLAIN_ARCHS


class ExportError(ConversionError):
  """Variables that cannot be exported (the message names the leaf and the fix)."""


def fc_classes(variables, arch: str) -> int:
  """The classes of `arch`'s fc in `variables` (0: none, a backbone)."""
  head = ("params", "head_fc" if arch.startswith("convnext") else "fc", "bias")
  flat = _flat_paths({c: variables[c] for c in ("params",) if c in variables})
  return int(flat[head].shape[0]) if head in flat else 0


def check_arch(arch: str, flag: str = "arch") -> None:
  if arch not in EXPORT_ARCHS:
    raise ExportError(f"{flag}={arch!r} is not a model neurojax exports to PyTorch; choose one "
                      f"of: {', '.join(EXPORT_ARCHS)} (the last {len(PLAIN_ARCHS)} have no "
                      "torchvision class: they export to plain PyTorch keys)")


def export_state_dict(variables, arch: str, model=None, image_shape=(32, 32, 3),
                      num_batches_tracked: int = 0, source: str = "the variables",
                      fix: str | None = None) -> dict[str, np.ndarray]:
  """A torchvision `arch` state_dict (name -> numpy array) of neurojax
  variables ({"params", "batch_stats"}): the inverse of `convert_state_dict`.

  Kernels go back to PyTorch's layouts (HWIO -> OIHW, Dense [in, out] ->
  Linear [out, in], ConvNeXt's layer scale [C] -> [C, 1, 1]); BN statistics
  become `running_mean`/`running_var`, and each BN gets `num_batches_tracked`
  (int64; torchvision's BNs, with momentum 0.1, do not read it). The
  variables must have the shapes of `model` (default: `arch` as registered,
  with the classes of its fc; pass the model of a slimmed or widened net,
  e.g. `sparsity.load_exported`'s). Raises ExportError naming the leaf
  (`source` names where the variables come from, `fix` replaces the advice)."""
  check_arch(arch)
  variables = jax.device_get({c: variables[c] for c in ("params", "batch_stats")
                              if c in variables})
  flat = _flat_paths(variables)
  if model is None:
    from neurojax import models  # pylint: disable=g-import-not-at-top
    model = models.get_model(arch, num_classes=fc_classes(variables, arch))
  expected = _flat_paths(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                        np.zeros((1, *image_shape), np.float32)))
  hint = fix or (f"is arch={arch} right? (a slimmed or narrower model: pass its own model, "
                 "e.g. from sparsity.load_exported)")
  for path, leaf in expected.items():
    if path not in flat:
      raise ExportError(f"{'/'.join(path)} (shape {tuple(leaf.shape)} in {arch}) is missing "
                        f"from {source}; {hint}")
    if tuple(np.shape(flat[path])) != tuple(leaf.shape):
      raise ExportError(f"{'/'.join(path)} has shape {tuple(np.shape(flat[path]))} in {source} "
                        f"but {tuple(leaf.shape)} in {arch}; {hint}")
  extra = [p for p in flat if p not in expected]
  if extra:
    raise ExportError(f"{'/'.join(extra[0])} in {source} is not a variable of {arch}"
                      + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "") + f"; {hint}")
  out = {}
  for path, array in flat.items():
    key = torch_key(path, arch)
    if key is None:
      raise ExportError(f"{'/'.join(path)} has no PyTorch counterpart in {arch}'s layout")
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":       # numpy-only dtype: torch.from_numpy refuses it
      array = array.astype(np.float32)
    out[key] = np.asarray(_to_torch(array, path[-1]), order="C")
    if path[0] == "batch_stats" and path[-1] == "var":
      out[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(
          num_batches_tracked, np.int64)
  return out


def _write_atomically(path: str, write) -> None:
  """`write(tmp)`, then renames tmp to `path`: never a half-written file."""
  path = os.path.abspath(path)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)          # safetensors writes 0600
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def save_safetensors(state_dict: dict, path: str, metadata: dict | None = None) -> None:
  """Writes `state_dict` (name -> array) as safetensors; `safetensors.torch.load_file`
  (or `safetensors.numpy.load_file`) reads it back."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # (ascontiguousarray: 0-d -> 1-d)
  meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
  _write_atomically(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def save_torch(state_dict: dict, path: str) -> None:
  """Writes `state_dict` as a .pt of tensors (torch.save); `torch.load(path,
  weights_only=True)` reads it back."""
  import torch  # pylint: disable=g-import-not-at-top
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
  _write_atomically(path, lambda tmp: torch.save(tensors, tmp))


def torchvision_model(arch: str, state_dict: dict):
  """torchvision's `arch` (eval mode) holding `state_dict` (arrays or tensors),
  built to its shapes: a slimmed or narrower ResNet gets convs, BNs and an
  fc as wide as its tensors; a ConvNeXt gets the stage widths and depths of
  its tensors. Loads strictly; raises ExportError."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  if arch not in TORCHVISION_ARCHS:
    raise ExportError(f"arch={arch!r} has no torchvision model; choose one of: "
                      f"{', '.join(TORCHVISION_ARCHS)}")
  tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
  if arch.startswith("convnext"):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt  # pylint: disable=g-import-not-at-top
    stages = []
    while f"features.{2 * len(stages) + 1}.0.block.0.weight" in tensors:
      k = 2 * len(stages) + 1
      depth = sum(1 for key in tensors if re.fullmatch(rf"features\.{k}\.\d+\.layer_scale", key))
      stages.append((int(tensors[f"features.{k}.0.block.0.weight"].shape[0]), depth))
    settings = [CNBlockConfig(dim, stages[i + 1][0] if i + 1 < len(stages) else None, depth)
                for i, (dim, depth) in enumerate(stages)]
    net = ConvNeXt(settings, num_classes=int(tensors["classifier.2.weight"].shape[0]))
  else:
    fc = tensors.get("fc.weight")
    net = torchvision.models.get_model(arch, weights=None,
                                       num_classes=1000 if fc is None else int(fc.shape[0]))
    if fc is None:
      net.fc = torch.nn.Identity()
    stem = tensors.get("conv1.weight")
    if stem is not None and tuple(stem.shape[2:]) != (7, 7):
      raise ExportError(f"conv1.weight has a {stem.shape[2]}x{stem.shape[3]} kernel (neurojax's "
                        "stem='small'): torchvision's ResNet has a 7x7/2 stem and a max-pool; "
                        "load this state_dict into your own module")
    for name, m in list(net.named_modules()):
      w = tensors.get(f"{name}.weight")
      if w is None or tuple(w.shape) == tuple(m.weight.shape):
        continue
      if isinstance(m, torch.nn.Conv2d):
        new = torch.nn.Conv2d(w.shape[1] * m.groups, w.shape[0], m.kernel_size, m.stride,
                              m.padding, groups=m.groups, bias=m.bias is not None)
      elif isinstance(m, torch.nn.BatchNorm2d):
        new = torch.nn.BatchNorm2d(w.shape[0], eps=m.eps, momentum=m.momentum)
      elif isinstance(m, torch.nn.Linear):
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
      else:
        continue
      parent, _, child = name.rpartition(".")
      setattr(net.get_submodule(parent) if parent else net, child, new)
  try:
    net.load_state_dict(tensors, strict=True)
  except RuntimeError as e:
    raise ExportError(f"the state_dict does not fit torchvision's {arch}: "
                      f"{' '.join(str(e).split())[:500]}") from None
  return net.eval()


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
