"""Torch custom ops for code that torch.compile must not trace: one pattern for every op with its own backward.

A hand-written loop or kernel launcher (an autograd.Function, a Python loop writing into preallocated
buffers, a Triton launch, a data-dependent check) is opaque to the compiler only as a registered custom op:
then `torch.compile(..., fullgraph=True)` records one call, uses the op's fake function for shapes, and calls
the op's backward. The pattern, in three steps:

1. The forward is a custom op (`torch.library.custom_op(f"{LIB}::name", mutates_args=())`, or
   `torch.library.triton_op` for a Triton launcher) returning a tuple: the user-visible outputs first, then
   any residuals the backward needs (fresh tensors: a custom op's outputs may not alias its inputs or each
   other). Register its fake (meta) function with `@op.register_fake`: empty tensors of the output shapes.
2. The backward is a second custom op taking, in this order: the gradients of the first `n_outputs`
   outputs, every output of the forward (residuals included), every input of the forward. It returns one
   gradient per input listed in `differentiable`, in the input's dtype, and has a fake function as well.
3. `link_backward(forward_op, backward_op, n_outputs=..., differentiable=...)` registers the autograd glue:
   the forward's inputs and outputs are saved, gradients that autograd leaves as None (an output nobody
   used) arrive as zeros, and the backward op's results go back to the listed inputs.

Checks that need the data (a value the math cannot take) belong inside the op's implementation: there they
run on real tensors, in eager mode and compiled alike, without a host sync in the traced graph.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

LIB = "flashxlstm"


def link_backward(forward_op, backward_op, *, n_outputs: int, differentiable: Sequence[int]) -> None:
    """Make `backward_op` the gradient of `forward_op` (see the module docstring for both signatures).

    n_outputs: how many leading outputs of the forward are differentiable results (the rest are residuals).
    differentiable: the indices of the forward's inputs that receive a gradient, in the order the backward
    op returns them; every other input gets None.
    """
    differentiable = tuple(differentiable)

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in inputs]
        ctx.constants = [None if t else a for a, t in zip(inputs, ctx.is_tensor)]
        ctx.n_forward_outputs = len(outputs)
        ctx.save_for_backward(*outputs, *(a for a, t in zip(inputs, ctx.is_tensor) if t))

    def backward(ctx, *grads):
        saved = list(ctx.saved_tensors)
        outputs, tensors = saved[: ctx.n_forward_outputs], iter(saved[ctx.n_forward_outputs:])
        inputs = [next(tensors) if t else c for t, c in zip(ctx.is_tensor, ctx.constants)]
        g = [torch.zeros_like(o) if d is None else d for d, o in zip(grads[:n_outputs], outputs)]
        results = backward_op(*g, *outputs, *inputs)
        results = results if isinstance(results, (tuple, list)) else (results,)
        out = [None] * len(inputs)
        for index, grad in zip(differentiable, results):
            out[index] = grad
        return tuple(out)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
