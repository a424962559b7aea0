"""Export a neurojax ResNet or ConvNeXt to PyTorch: a torchvision state_dict.

    python -m neurojax.convert.export --workdir=runs/r50 --out=r50.safetensors
    python -m neurojax.convert.export --workdir=runs/r50 --arch=resnet50 --out=r50.pt
    python -m neurojax.convert.export --workdir=runs/fpgm/slim --out=slim.safetensors

--workdir is read, never written: a run's workdir (its newest good
checkpoint, as `neurojax.train.load_run` reads it), a directory written by
`python -m neurojax.convert.torchvision --out` (meta.json), or a slimmed
model (a prune run's `<workdir>/slim`: model.json, variables.npz). The
format follows --out's extension: .safetensors, or .pt / .pth (torch.save of
tensors; `torch.load(path, weights_only=True)` reads it). Without --arch
the model the directory records is exported as it is (a slimmed or narrower
ResNet too); --arch=NAME requires every variable to fit torchvision's NAME
(with the directory's classes), e.g. before `get_model(NAME)` loads it. The keys are torchvision's
(`torchvision.models.get_model(arch).load_state_dict(...)` loads them; a
slimmed ResNet's narrower convs: `torchvision.torchvision_model`); the CIFAR
ResNets, which torchvision lacks, get plain PyTorch keys
(`stage1_block0.conv1.weight`). From a run, `num_batches_tracked` is the
step count; otherwise 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from neurojax.convert import torchvision as tv

FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}


def _describe_source(directory: str) -> str:
  return (f"--workdir={directory} is not a neurojax run (checkpoints/<step>/), a converted "
          "directory (meta.json, from python -m neurojax.convert.torchvision) or a slimmed "
          "model (model.json + variables.npz, a prune run's <workdir>/slim)")


def _newest_image_shape(checkpoints: str):
  """The image shape in the newest checkpoint's meta (JSON), or None."""
  steps = sorted((int(n) for n in os.listdir(checkpoints) if n.isdigit()), reverse=True)
  for step in steps:
    try:
      with open(os.path.join(checkpoints, str(step), "meta", "metadata")) as f:
        return tuple(json.load(f)["image_shape"])
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return None


def read_source(directory: str) -> dict:
  """{"arch", "model", "variables", "image_shape", "num_batches_tracked",
  "kind"} of a run's workdir, a converted directory or a slimmed model,
  read-only; raises ExportError with one line naming the path and the fix."""
  if not os.path.isdir(directory):
    raise tv.ExportError(f"--workdir={directory} does not exist"
                         + ("" if not os.path.exists(directory) else " as a directory")
                         + "; pass a neurojax run's workdir, a converted directory or a "
                         "slimmed model (a prune run's <workdir>/slim)")
  from neurojax import models  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(directory, "meta.json")):           # convert.torchvision's
    try:
      variables, meta = tv.load(directory)
      arch = meta["arch"]
      model = models.get_model(arch, num_classes=int(meta["num_classes"]))
    except Exception as e:  # pylint: disable=broad-except
      raise tv.ExportError(f"--workdir={directory} has a meta.json but cannot be read as a "
                           f"converted directory ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); write it again with "
                           "python -m neurojax.convert.torchvision") from None
    return {"arch": arch, "model": model, "variables": variables, "image_shape": (32, 32, 3),
            "num_batches_tracked": 0, "kind": "converted directory"}
  if os.path.exists(os.path.join(directory, "model.json")):            # sparsity.export's
    from neurojax.sparsity import load_exported  # pylint: disable=g-import-not-at-top
    try:
      with open(os.path.join(directory, "model.json")) as f:
        spec = json.load(f)
      model, variables = load_exported(directory)
    except Exception as e:  # pylint: disable=broad-except
      raise tv.ExportError(f"--workdir={directory} has a model.json but cannot be read as a "
                           f"slimmed model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); export it again "
                           "(the prune run writes <workdir>/slim)") from None
    return {"arch": spec["name"], "model": model, "variables": variables,
            "image_shape": tuple(spec.get("image_shape") or (32, 32, 3)),
            "num_batches_tracked": 0, "kind": "slimmed model"}
  checkpoints = os.path.join(directory, "checkpoints")
  # Checked here, not by load_run: its checkpointer would create checkpoints/.
  if not os.path.isdir(checkpoints) or not any(n.isdigit() for n in os.listdir(checkpoints)):
    subruns = sorted(os.path.relpath(root, directory) for root, dirs, _ in os.walk(directory)
                     if root != directory and "checkpoints" in dirs)
    if subruns:
      raise tv.ExportError(f"--workdir={directory} has no checkpoint of its own; the runs inside "
                           f"it are: {', '.join(subruns)}; pass one of them")
    if os.path.isdir(checkpoints):
      raise tv.ExportError(f"--workdir={directory} has no checkpoint ({checkpoints} holds no "
                           "step); let the run save one, or pass another --workdir")
    raise tv.ExportError(_describe_source(directory) + "; pass one of those")
  from neurojax.train import load_run  # pylint: disable=g-import-not-at-top
  from neurojax.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    config, model, state = load_run(directory)
  except CheckpointError as e:
    raise tv.ExportError(" ".join(str(e).split())) from None
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return {"arch": config.model.name, "model": model, "variables": variables,
          "image_shape": _newest_image_shape(checkpoints) or (32, 32, 3),
          "num_batches_tracked": int(jax.device_get(state.step)), "kind": "run"}


def export(directory: str, out: str, arch: str | None = None) -> dict:
  """Writes the weights in `directory` (see `read_source`) to `out`
  (.safetensors or .pt); returns {"arch", "kind", "tensors", "params", "out"}."""
  fmt = FORMATS.get(os.path.splitext(out)[1].lower())
  if fmt is None:
    raise tv.ExportError(f"--out={out}: the format follows the extension; end it in "
                         f"{', '.join(FORMATS)}")
  if arch is not None:
    tv.check_arch(arch, "--arch")
  source = read_source(directory)
  tv.check_arch(source["arch"], f"the model in {directory}")
  model, fix = source["model"], None
  if arch is not None:       # the standard torchvision `arch`: every variable must fit it
    from neurojax import models  # pylint: disable=g-import-not-at-top
    model = models.get_model(arch, num_classes=tv.fc_classes(source["variables"], arch))
    fix = (f"is --arch={arch} right? Leave --arch out to export the model {directory} "
           f"records (a {source['arch']}{', slimmed' if source['kind'] == 'slimmed model' else ''}"
           "; a narrower ResNet loads with neurojax.convert.torchvision.torchvision_model)")
  arch = arch or source["arch"]
  state_dict = tv.export_state_dict(
      source["variables"], arch, model, source["image_shape"], source["num_batches_tracked"],
      source=f"{directory}", fix=fix)
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise tv.ExportError(f"--out={out}: the directory {parent} does not exist; create it or "
                         "pass another --out")
  if fmt == "safetensors":
    tv.save_safetensors(state_dict, out, {"arch": arch, "source": os.path.abspath(directory)})
  else:
    tv.save_torch(state_dict, out)
  params = sum(int(np.size(v)) for k, v in state_dict.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  return {"arch": arch, "kind": source["kind"], "tensors": len(state_dict), "params": params,
          "out": out}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m neurojax.convert.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a run's workdir, a converted directory or a slimmed model (read only)")
  parser.add_argument("--arch", default=None,
                      help="the torchvision model (default: the one the directory records)")
  parser.add_argument("--out", required=True, help="the file to write: .safetensors or .pt")
  args = parser.parse_args(argv)
  try:
    info = export(args.workdir, args.out, args.arch)
  except tv.ExportError as e:
    sys.exit(f"neurojax.export: {e}")
  except OSError as e:
    from neurojax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    sys.exit(f"neurojax.export: {workdir_lib.os_error_message(e, args.out, '--out')}")
  print(f"wrote {info['out']}: {info['arch']} from a {info['kind']}, {info['tensors']} tensors, "
        f"{info['params']:,} params")


if __name__ == "__main__":
  main()
