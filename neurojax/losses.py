"""Losses and per-batch metric sums.

Every reduction is a weighted sum over the (global, sharded) batch, so
means are exact across devices and processes and padded eval rows
(weight 0) do not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with optional label smoothing, in f32."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def mixed_cross_entropy(logits, labels, lam, label_smoothing: float = 0.0):
  """The loss of a batch mixed with its reverse (`train.mix`): the
  cross-entropy against lam * target(y) + (1 - lam) * target(y reversed)."""
  return (lam * cross_entropy(logits, labels, label_smoothing)
          + (1 - lam) * cross_entropy(logits, labels[::-1], label_smoothing))


def topk_correct(logits, labels, k: int):
  """1.0 where the label is among the k highest logits (ties count as correct)."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  higher = jnp.sum(logits > label_logit, axis=-1)
  return (higher < k).astype(jnp.float32)


def metric_sums(logits, labels, losses, weights):
  """Weighted sums of loss, top-1 and top-5, plus the total weight."""
  return {
      "loss": jnp.sum(losses * weights),
      "top1": jnp.sum(topk_correct(logits, labels, 1) * weights),
      "top5": jnp.sum(topk_correct(logits, labels, 5) * weights),
      "count": jnp.sum(weights),
  }


def means(sums):
  """Turns metric sums (host numbers) into means."""
  count = float(sums["count"])
  return {k: float(v) / max(count, 1.0) for k, v in sums.items() if k != "count"}
