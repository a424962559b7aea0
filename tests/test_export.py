"""Weights back to PyTorch: neurojax -> torchvision state_dicts (.pt, safetensors)."""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

from neurojax import models, sparsity  # noqa: E402
from neurojax.convert import export as export_cli  # noqa: E402
from neurojax.convert import torchvision as convert  # noqa: E402
from neurojax.models import convnext  # noqa: E402
from tests import cli  # noqa: E402
from torch_helpers import randomise  # noqa: E402

SIZE = 32
X = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _logits(net, x=X):
  with torch.no_grad():
    return net(torch.from_numpy(x)).numpy()


def _assert_same_state_dict(ours: dict, theirs: dict):
  theirs = {k: v.numpy() for k, v in theirs.items()}
  assert sorted(ours) == sorted(theirs)
  for k, v in theirs.items():
    assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
    np.testing.assert_array_equal(ours[k], v, err_msg=k)


def _one_line_exit(argv) -> str:
  with pytest.raises(SystemExit) as e:
    export_cli.main(argv)
  message = str(e.value.code)
  assert message.startswith("neurojax.export: ") and "\n" not in message, message
  return message


@pytest.fixture(scope="module")
def resnet18():
  net = randomise(torchvision.models.resnet18(num_classes=10))
  variables = convert.convert_state_dict(net.state_dict(), models.get_model(
      "resnet18", num_classes=10), (SIZE, SIZE, 3))
  return net, variables


def test_resnet18_round_trip_is_exact_and_gives_the_logits(resnet18, tmp_path):
  net, variables = resnet18
  exported = convert.export_state_dict(variables, "resnet18")
  _assert_same_state_dict(exported, net.state_dict())       # num_batches_tracked included
  again = torchvision.models.resnet18(num_classes=10)
  again.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  want = _logits(net)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(_logits(again.eval()), want, atol=1e-5, rtol=0)
  convert.save_safetensors(exported, str(tmp_path / "r18.safetensors"), {"arch": "resnet18"})
  _assert_same_state_dict(exported, safetensors_torch.load_file(str(tmp_path / "r18.safetensors")))
  convert.save_torch(exported, str(tmp_path / "r18.pt"))
  _assert_same_state_dict(exported, torch.load(str(tmp_path / "r18.pt"), weights_only=True))
  assert sorted(os.listdir(tmp_path)) == ["r18.pt", "r18.safetensors"]    # no temp files left


def test_tiny_convnext_round_trip_with_layer_scale_and_layer_norms():
  from torchvision.models.convnext import CNBlockConfig, ConvNeXt  # pylint: disable=g-import-not-at-top
  net = randomise(ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1),
                             CNBlockConfig(24, 32, 2), CNBlockConfig(32, None, 1)],
                            num_classes=5))
  model = convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5)
  variables = convert.convert_state_dict(net.state_dict(), model, (SIZE, SIZE, 3),
                                         arch="convnext_tiny")
  exported = convert.export_state_dict(variables, "convnext_tiny", model)
  _assert_same_state_dict(exported, net.state_dict())
  assert exported["features.5.1.layer_scale"].shape == (24, 1, 1)
  rebuilt = convert.torchvision_model("convnext_tiny", exported)   # widths/depths from the keys
  want = _logits(net)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(_logits(rebuilt), want, atol=1e-5, rtol=0)
  ours = jax.jit(model.apply)(variables, X.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-4, rtol=0)


def _fpgm_slim(name, variables, model, density=0.5):
  groups = models.channel_groups(name, model)
  masks = sparsity.fpgm_channels(variables["params"], sparsity.group_masks(
      variables["params"], groups), groups, density)
  return sparsity.slim(variables, masks, groups)


def test_slimmed_resnet18_loads_into_a_narrower_torchvision_resnet(resnet18, tmp_path):
  _, variables = resnet18
  slim_vars, widths = _fpgm_slim("resnet18", variables, models.get_model("resnet18",
                                                                         num_classes=10))
  slim_model = models.get_model("resnet18", num_classes=10, block_widths=tuple(widths))
  exported = convert.export_state_dict(slim_vars, "resnet18", slim_model)
  assert exported["layer1.0.conv1.weight"].shape == (widths[0], 64, 3, 3)
  assert exported["layer1.0.conv2.weight"].shape == (64, widths[0], 3, 3)
  assert exported["layer2.0.bn1.running_var"].shape == (widths[2],)
  net = convert.torchvision_model("resnet18", exported)
  assert net.layer1[0].conv1.out_channels == widths[0] < 64
  want = np.asarray(jax.jit(lambda v, x: slim_model.apply(v, x, train=False))(
      slim_vars, X.transpose(0, 2, 3, 1)))
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(_logits(net), want, atol=1e-4, rtol=0)
  # The same from a prune run's <workdir>/slim, through the CLI (in process).
  slim_dir = str(tmp_path / "slim")
  sparsity.export(slim_dir, {"name": "resnet18", "num_classes": 10,
                             "options": {"block_widths": list(widths)},
                             "image_shape": [SIZE, SIZE, 3]}, slim_vars)
  export_cli.main([f"--workdir={slim_dir}", f"--out={tmp_path / 'slim.safetensors'}"])
  _assert_same_state_dict(exported, safetensors_torch.load_file(str(tmp_path / "slim.safetensors")))
  # Not torchvision's resnet18 as it is: the first narrower leaf is named.
  with pytest.raises(convert.ExportError, match=r"layer1_0/bn1/mean has shape \(\d+,\) in the "
                     r"variables but \(64,\) in resnet18"):
    convert.export_state_dict(slim_vars, "resnet18")
  message = _one_line_exit([f"--workdir={slim_dir}", "--arch=resnet18",
                            f"--out={tmp_path / 'x.pt'}"])
  assert "layer1_0/bn1/mean has shape" in message and "Leave --arch out" in message


def test_slimmed_cifar_resnet20_exports_plain_pytorch_keys():
  model = models.get_model("resnet20", num_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda x: rng.uniform(0.1, 0.5, x.shape).astype(x.dtype), shapes)
  slim_vars, widths = _fpgm_slim("resnet20", variables, model)
  slim_model = models.get_model("resnet20", num_classes=10, block_widths=tuple(widths))
  exported = convert.export_state_dict(slim_vars, "resnet20", slim_model)
  assert exported["stage1_block0.conv1.weight"].shape == (widths[0], 16, 3, 3)
  assert exported["stage3_block2.conv2.weight"].shape == (64, widths[-1], 3, 3)
  assert exported["fc.weight"].shape == (10, 64)
  assert exported["stage2_block1.bn1.num_batches_tracked"].dtype == np.int64
  np.testing.assert_array_equal(exported["stage1_block0.conv1.weight"],
                                slim_vars["params"]["stage1_block0"]["conv1"]["kernel"]
                                .transpose(3, 2, 0, 1))
  # The importer's mapping reads the plain keys back onto the slimmed model.
  back = convert.convert_state_dict(exported, slim_model, (SIZE, SIZE, 3), arch="resnet20")
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(slim_vars))


def test_cli_exports_a_run_and_reads_the_workdir_only(tmp_path, capsys):
  from neurojax import methods  # pylint: disable=g-import-not-at-top
  from neurojax.config import load_config_file  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  config = load_config_file(cli.TINY, "resnet18")     # trained in process: no 2nd jax start
  config.model.stem, config.model.width = "imagenet", 4
  config.data.synthetic_shape = (SIZE, SIZE, 3)
  config.num_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  config.log_every_steps = 2
  methods.get(config.method)(config, str(workdir))
  capsys.readouterr()                                   # the run's own report
  before = sorted((root, f, os.stat(os.path.join(root, f)).st_mtime_ns)
                  for root, dirs, files in os.walk(workdir) for f in files + dirs)
  out = tmp_path / "run.pt"
  export_cli.main([f"--workdir={workdir}", f"--out={out}"])     # in process: no 2nd jax start
  assert capsys.readouterr().out.startswith(f"wrote {out}: resnet18 from a run, 122 tensors, ")
  after = sorted((root, f, os.stat(os.path.join(root, f)).st_mtime_ns)
                 for root, dirs, files in os.walk(workdir) for f in files + dirs)
  assert after == before
  from neurojax.train import load_run  # pylint: disable=g-import-not-at-top
  _, model, state = load_run(str(workdir))
  state_dict = torch.load(str(out), weights_only=True)
  assert int(state_dict["bn1.num_batches_tracked"]) == int(state.step) == 2
  net = convert.torchvision_model("resnet18", state_dict)       # width 4: narrower convs
  want = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                     X.transpose(0, 2, 3, 1), train=False)
  np.testing.assert_allclose(_logits(net), np.asarray(want), atol=1e-4, rtol=0)


def test_bad_inputs_give_one_line_naming_the_path_and_the_fix(resnet18, tmp_path):
  _, variables = resnet18
  converted = str(tmp_path / "converted")
  convert.save(converted, variables, {"arch": "resnet18", "num_classes": 10, "source": "test"})
  out = str(tmp_path / "out.safetensors")
  message = _one_line_exit([f"--workdir={converted}", "--arch=resnet51", f"--out={out}"])
  assert "--arch='resnet51' is not a model neurojax exports" in message and "resnet50" in message
  with pytest.raises(convert.ExportError, match="'dit_resnet20' is not a model"):
    convert.export_state_dict({}, "dit_resnet20")
  message = _one_line_exit([f"--workdir={converted}", "--arch=resnet50", f"--out={out}"])
  assert f"is missing from {converted}; is --arch=resnet50 right?" in message
  message = _one_line_exit([f"--workdir={converted}", f"--out={tmp_path / 'out.bin'}"])
  assert "--out=" in message and "end it in .safetensors, .pt, .pth" in message
  message = _one_line_exit([f"--workdir={tmp_path / 'nowhere'}", f"--out={out}"])
  assert f"--workdir={tmp_path / 'nowhere'} does not exist" in message
  empty = tmp_path / "empty"
  empty.mkdir()
  message = _one_line_exit([f"--workdir={empty}", f"--out={out}"])
  assert f"--workdir={empty} is not a neurojax run (checkpoints/<step>/)" in message
  assert os.listdir(empty) == []                                   # nothing created there
  (empty / "checkpoints").mkdir()
  message = _one_line_exit([f"--workdir={empty}", f"--out={out}"])
  assert f"--workdir={empty} has no checkpoint" in message
  message = _one_line_exit([f"--workdir={converted}", f"--out={tmp_path / 'no' / 'x.pt'}"])
  assert "does not exist; create it or pass another --out" in message
  assert not os.path.exists(out)
  # A variable that fits no leaf of the model is named too.
  bad = jax.tree.map(lambda x: x, variables)
  bad["params"]["layer1_0"]["conv1"]["kernel"] = bad["params"]["layer1_0"]["conv1"]["kernel"][:2]
  with pytest.raises(convert.ExportError, match=r"params/layer1_0/conv1/kernel has shape "
                     r"\(2, 3, 64, 64\) in the variables but \(3, 3, 64, 64\) in resnet18"):
    convert.export_state_dict(bad, "resnet18")
