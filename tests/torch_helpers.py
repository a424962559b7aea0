"""Helpers for the tests that compare with torchvision (they need torch)."""

import numpy as np
import torch


def randomise(net, seed=0):
  """Every param and BN statistic random and O(1) (init's 0/1 BN and 1e-6
  layer scale would hide a swap or a skipped transpose)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith("layer_scale"):
        p.uniform_(0.5, 1.5)
      elif p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, 1.0 / np.sqrt(p[0].numel()))
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  return net.eval()
