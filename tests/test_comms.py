"""Communication, proven: the collectives of neurojax's real train step.

The step is built as the library builds it (`create_train_state`,
`steps.jit_train_step(steps.train_step_fn(...))`, replicated state, batches
sharded on `data`), compiled for the 8 fake CPU devices of conftest.py, and
its optimized HLO read with `parallel.hlo_collectives`. Data parallelism
should cost one all-reduce of the gradients per step, plus the global
batch's BatchNorm statistics and a few metric scalars: nothing that gathers
or moves the (replicated) params.
"""

from collections import Counter

import jax
import numpy as np
import optax

from neurojax import models, parallel
from neurojax.train import steps

F32 = 4
METRIC_SCALARS = 3  # loss (= loss_ce, one value), top1, top5: global batch means


def _compiled_step(name, input_shape, batch_size):
  """The optimized HLO text of the train step on 8 devices, and the state's
  shapes (`steps.lower_train_step`: the program a real state gets, without
  compiling and running the init)."""
  assert jax.device_count() == 8, "conftest should give 8 fake CPU devices"
  model = models.get_model(name, num_classes=10)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  lowered, state = steps.lower_train_step(model, tx, parallel.make_mesh(), input_shape,
                                          batch_size, label_smoothing=0.1)
  return lowered.compile().as_text(), state


def _sizes(tree):
  return [int(np.prod(x.shape)) * F32 for x in jax.tree.leaves(tree)]


def test_hlo_collectives_parses_tuples_and_async_pairs():
  text = """
  %all-reduce.3 = (f32[20]{0}, f32[5,5,1,20]{3,2,1,0}, /*index=2*/f32[], bf16[8]{0}) all-reduce(%a, %b, %c, %d), to_apply=%sum
  %get-tuple-element.1 = f32[20]{0} get-tuple-element(%all-reduce.3), index=0
  %ags = (f32[2]{0}, f32[16]{0}) all-gather-start(%x), dimensions={0}
  %agd = f32[16]{0} all-gather-done(%ags)
  ROOT %cp = pred[3]{0} collective-permute(%y), source_target_pairs={{0,1}}
  """
  assert parallel.hlo_collectives(text) == [
      ("all-reduce", [80, 2000, 4, 16]), ("all-gather", [8, 64]), ("collective-permute", [3])]


def test_lenet5_step_all_reduces_exactly_the_gradient():
  hlo, state = _compiled_step("lenet5", (28, 28, 1), 16)
  colls = parallel.hlo_collectives(hlo)
  assert {op for op, _ in colls} == {"all-reduce"}, colls
  grad_bytes = sum(_sizes(state.params))
  assert grad_bytes == 431_080 * F32
  total = sum(sum(arrays) for _, arrays in colls)
  extra = total - grad_bytes
  assert 0 <= extra < 1024, (total, grad_bytes)
  # Exactly: every gradient leaf once (f32, also its bias vectors) and the
  # metric scalars; XLA combines them all into one tuple all-reduce.
  arrays = [a for _, arrays in colls for a in arrays]
  assert Counter(arrays) == Counter(_sizes(state.params) + [F32] * METRIC_SCALARS)
  assert extra == METRIC_SCALARS * F32
  assert len(colls) == 1


def test_resnet20_step_all_reduces_gradient_and_batchnorm_statistics():
  hlo, state = _compiled_step("resnet20", (8, 8, 3), 16)
  colls = parallel.hlo_collectives(hlo)
  assert {op for op, _ in colls} == {"all-reduce"}, colls
  grad_bytes = sum(_sizes(state.params))
  bn_channels = [int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(
      state.batch_stats) if path[-1].key == "mean"]
  assert len(bn_channels) == 19 and sum(bn_channels) == 688
  # What XLA emits per BN layer of C channels, besides its scale and bias
  # gradients (2C, in the gradient), all f32 over the global batch:
  #   forward:  sum(x) and sum(x^2) -> the batch mean and mean of squares
  #             (flax's var = E[x^2] - E[x]^2): 2C, one all-reduce per layer;
  #   backward: fastpath.BatchNorm's gradient (on by default on the CPU)
  #             reduces sum(g) and sum(g * (x - mean)) once each: they are
  #             the bias gradient and the scale gradient over rsqrt(var +
  #             eps), so nothing beyond the gradient. (Autodiff's, with the
  #             fast path off, adds a third C: -sum(g * scale * rsqrt(...)).)
  # So 2C extra per BN layer: 2 * 688 * 4 = 5,504 bytes for ResNet-20.
  expected = _sizes(state.params) + [c * F32 for c in bn_channels for _ in range(2)]
  expected += [F32] * METRIC_SCALARS
  arrays = [a for _, arrays in colls for a in arrays]
  assert Counter(arrays) == Counter(expected)
  total = sum(arrays)
  assert total == grad_bytes + 2 * F32 * sum(bn_channels) + METRIC_SCALARS * F32
  assert total - grad_bytes == 5_516
  # The BN reductions sit on the critical path (each layer needs its
  # statistics before the next layer; the backward, the same in reverse), so
  # they stay separate small all-reduces: one forward and one backward per
  # layer, plus one combined all-reduce of the rest of the gradient.
  assert len(colls) == 2 * len(bn_channels) + 1
