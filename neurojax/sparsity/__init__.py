"""Masks as pytree transforms: scores, selection, application, regeneration,
an optax wrapper that holds pruned weights at zero, and statistics.

    masks = dense_masks(params)                           # conv + dense kernels
    masks = global_topk(magnitude(params, masks), 0.08)   # keep 8%
    params = apply(params, masks)
    tx = masked(optax.sgd(0.1, momentum=0.9))             # update(..., masks=masks)
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
from neurojax.sparsity.transform import masked

__all__ = ["DEFAULT_INCLUDE", "alive_channels", "apply", "bn_gamma", "ce_grad_fn",
           "channel_masks", "channels", "count", "dense_masks", "export", "fill", "fpgm",
           "fpgm_channels", "global_topk", "group_masks", "intersect", "layer_stats",
           "load_exported", "magnitude", "map_masked", "masked", "per_layer_topk", "random",
           "regenerate", "slim", "snip", "snip_batch_count", "std_threshold", "summary",
           "table"]
