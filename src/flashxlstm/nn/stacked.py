"""Several Linear layers of one input as one matmul (training's projections).

`stacked_linear(x, layers)` returns what `tuple(layer(x) for layer in layers)` returns, from one matmul over
the stacked weights. Under autocast the separate layers would each cast x to the low precision and keep their
own copy for the backward; the stacked form casts and keeps one, reads x once, and accumulates x's gradient
inside one matmul. The stacking copies the weights on every call, so it serves training, where the saved
activations outweigh that copy, and not decoding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stacked_linear(x: Tensor, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
    """(layer(x) for layer in layers) as one matmul over the stacked weights (and biases, zeros for those
    without); the outputs are column slices of one tensor."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = None
    if any(layer.bias is not None for layer in layers):
        bias = torch.cat([layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
                          for layer in layers])
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)
