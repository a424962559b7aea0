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


ECE_BINS = 15      # equal-width confidence bins (Guo et al. 2017; Naeini et al. 2015)


def calibration_sums(logits, labels, weights, expected_entropy=None):
  """Weighted sums for calibration, of p = softmax(logits): the Brier score
  sum_c (p_c - y_c)^2, the predictive entropy H[p], with
  `expected_entropy` (the mean of H over Monte-Carlo samples, per example)
  the mutual information H[p] - E[H], and per confidence bin ((b/15,
  (b+1)/15] of max p) the weight, confidence and correct (argmax) sums:
  `means` turns them into the ECE, sum_b |correct_b - confidence_b| / N."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  p = jnp.exp(log_p)
  onehot = jax.nn.one_hot(labels, p.shape[-1])
  entropy = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
  conf = jnp.max(p, axis=-1)
  correct = (jnp.argmax(p, axis=-1) == labels).astype(jnp.float32)
  bins = jax.nn.one_hot(jnp.clip(jnp.ceil(conf * ECE_BINS).astype(jnp.int32) - 1, 0,
                                 ECE_BINS - 1), ECE_BINS) * weights[:, None]
  sums = {"brier": jnp.sum(jnp.sum((p - onehot) ** 2, axis=-1) * weights),
          "entropy": jnp.sum(entropy * weights),
          "bin_count": jnp.sum(bins, axis=0), "bin_confidence": conf @ bins,
          "bin_correct": correct @ bins}
  if expected_entropy is not None:
    sums["mi"] = jnp.sum((entropy - expected_entropy) * weights)
  return sums


def ece(sums) -> float:
  """The expected calibration error of `calibration_sums` (host arrays)."""
  gap = jnp.abs(jnp.asarray(sums["bin_correct"]) - jnp.asarray(sums["bin_confidence"]))
  return float(jnp.sum(gap)) / max(float(sums["count"]), 1.0)


def means(sums):
  """Turns metric sums (host numbers) into means; the confidence bins of
  `calibration_sums` into "ece"."""
  count = float(sums["count"])
  out = {k: float(v) / max(count, 1.0) for k, v in sums.items()
         if k != "count" and not k.startswith("bin_")}
  if "bin_count" in sums:
    out["ece"] = ece(sums)
  return out
