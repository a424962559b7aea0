"""The torchvision importer, against torchvision's own (randomly initialised) ResNets."""

import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from neurojax import models  # noqa: E402
from neurojax.convert import torchvision as convert  # noqa: E402

SIZE = 64            # 64 px: a 2x2 map before the pool, and quick on a CPU


def _reference(arch, seed=0):
  """torchvision's model in eval mode, with random BN statistics and affine
  parameters (at init they are 0/1, which would hide a swap). The last BN of
  each residual branch gets a small scale, as trained nets have, so that
  the logits stay O(1) through 50 blocks."""
  torch.manual_seed(seed)
  net = torchvision.models.get_model(arch, weights=None, num_classes=10)
  last = "bn3" if arch not in ("resnet18", "resnet34") else "bn2"
  with torch.no_grad():
    for name, m in net.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(*((0.1, 0.3) if name.endswith(last) else (0.5, 1.5)))
        m.bias.uniform_(-0.2, 0.2)
  return net.eval()


@pytest.mark.parametrize("arch,block", [("resnet18", "layer2_1"), ("resnet50", "layer3_5"),
                                        ("resnet152", "layer3_35")])
def test_logits_and_a_block_match_torchvision(arch, block):
  net = _reference(arch)
  x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
  captured = {}
  torch_block = getattr(net, block.split("_")[0])[int(block.split("_")[1])]
  torch_block.register_forward_hook(lambda m, i, o: captured.setdefault("block", o))
  with torch.no_grad():
    want = net(torch.from_numpy(x)).numpy()
  model = models.get_model(arch, num_classes=10)
  variables = convert.convert_state_dict(net.state_dict(), model, (SIZE, SIZE, 3))
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=lambda mdl, _: mdl.name == block,
      mutable=["intermediates"]))(variables, x.transpose(0, 2, 3, 1))
  assert np.abs(want).max() > 0.1                  # logits that vary
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
  ours = np.asarray(state["intermediates"][block]["__call__"][0])
  np.testing.assert_allclose(ours, captured["block"].numpy().transpose(0, 2, 3, 1),
                             atol=1e-4, rtol=0)


def test_cli_writes_a_checkpoint_that_loads(tmp_path):
  net = _reference("resnet18", seed=1)
  path = tmp_path / "r18.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
  out = tmp_path / "converted"
  proc = subprocess.run([sys.executable, "-m", "neurojax.convert.torchvision", "--arch",
                         "resnet18", "--state-dict", str(path), "--out", str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resnet18, 10 classes, 11,181,642 params" in proc.stdout
  variables, meta = convert.load(str(out))
  assert meta["arch"] == "resnet18" and meta["num_classes"] == 10
  expected = convert.convert_state_dict(net.state_dict(), models.get_model("resnet18",
                                                                           num_classes=10))
  chex.assert_trees_all_equal(jax.device_get(variables), expected)


def test_bad_state_dicts_name_the_key(tmp_path):
  net = _reference("resnet18")
  model = models.get_model("resnet18", num_classes=10)
  state = net.state_dict()
  bad = dict(state)
  bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"][:, :32]
  with pytest.raises(convert.ConversionError, match=r"layer1\.0\.conv1\.weight: shape"):
    convert.convert_state_dict(bad, model)
  missing = {k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}
  with pytest.raises(convert.ConversionError, match=r"missing.*layer4_1\.bn2\.var"):
    convert.convert_state_dict(missing, model)
  extra = dict(state, **{"layer5.0.conv1.weight": state["layer1.0.conv1.weight"]})
  with pytest.raises(convert.ConversionError, match=r"unexpected.*layer5\.0\.conv1\.weight"):
    convert.convert_state_dict(extra, model)
  with pytest.raises(convert.ConversionError, match=r"fc\.weight: shape"):     # wrong arch
    convert.convert_state_dict(state, models.get_model("resnet18", num_classes=1000))
  corrupt = tmp_path / "corrupt.pth"
  torch.save(state, corrupt)
  corrupt.write_bytes(corrupt.read_bytes()[:1000])
  with pytest.raises(convert.ConversionError, match="cannot read .*corrupt.pth"):
    convert.read_state_dict(str(corrupt))
  pickled = tmp_path / "model.pth"
  torch.save(net, pickled)                          # a whole pickled module: refused
  with pytest.raises(convert.ConversionError, match="cannot read"):
    convert.read_state_dict(str(pickled))
