"""Masks as pytree transforms: scores, selection, application, regeneration,
an optax wrapper that holds pruned weights at zero, and statistics.

    masks = dense_masks(params)                           # conv + dense kernels
    masks = global_topk(magnitude(params, masks), 0.08)   # keep 8%
    params = apply(params, masks)
    tx = masked(optax.sgd(0.1, momentum=0.9))             # update(..., masks=masks)
    tx = with_l1(tx, 1e-4, bn_scale_mask)                 # + 1e-4 * sign(w) on the mask
    params = regenerate(params, masks, fresh_params)      # DNR / KE / LLF
    masks = fpgm_channels(params, group_masks(params, groups), groups, 0.6)
    slim_variables, widths = slim(variables, masks, groups)
    print(table(layer_stats(params, masks)))
"""

from neurojax.sparsity.masks import (DEFAULT_INCLUDE, apply, dense_masks, fill, map_masked,
                                     regenerate)
from neurojax.sparsity.scores import (bn_gamma, ce_grad_fn, fpgm, magnitude, random, snip,
                                      snip_batch_count)
from neurojax.sparsity.select import (channels, count, global_topk, intersect, per_layer_topk,
                                      std_threshold)
from neurojax.sparsity.stats import layer_stats, summary, table
from neurojax.sparsity.structured import (alive_channels, channel_masks, export, fpgm_channels,
                                          group_masks, load_exported, slim)
from neurojax.sparsity.transform import L1State, masked, set_l1_strength, with_l1

__all__ = ["DEFAULT_INCLUDE", "L1State", "set_l1_strength", "with_l1", "alive_channels", "apply", "bn_gamma", "ce_grad_fn",
           "channel_masks", "channels", "count", "dense_masks", "export", "fill", "fpgm",
           "fpgm_channels", "global_topk", "group_masks", "intersect", "layer_stats",
           "load_exported", "magnitude", "map_masked", "masked", "per_layer_topk", "random",
           "regenerate", "slim", "snip", "snip_batch_count", "std_threshold", "summary",
           "table"]
