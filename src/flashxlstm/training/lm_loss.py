"""The language-model loss as a module (what DDP / FSDP wrap): body, then a chunked cross-entropy.

`CausalLMLoss(model)(input_ids, targets, cu_seqlens, state)` returns (sum of the token losses, number of
counted targets, new state). The head and the cross-entropy run over `ce_chunk` positions at a time under
activation checkpointing, so neither the fp32 logits nor the low-precision ones of the whole batch are ever
held: the backward recomputes one chunk's logits at a time. `checkpoint_blocks` recomputes each residual
block in the backward instead of keeping its activations.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .presets import blocks_of

from ..data.shards import IGNORE_INDEX


def chunk_loss(h: Tensor, weight: Tensor, targets: Tensor, soft_cap: float | None) -> Tensor:
    """sum of CE(soft_cap(h @ weight.T) in float32 at least, targets) over one chunk of positions."""
    logits = F.linear(h, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least (fp64 stays)
    if soft_cap is not None:
        logits = soft_cap * torch.tanh(logits / soft_cap)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, *, chunk: int = 4096,
                          soft_cap: float | None = None, loss_fn: Callable = chunk_loss) -> Tensor:
    """sum over positions of CE(hidden @ weight.T, targets), `chunk` positions at a time (recomputed in the
    backward); hidden (N, D), targets (N,) with IGNORE_INDEX where nothing is predicted. loss_fn: the loss of
    one chunk, `chunk_loss` or a compiled form of it."""
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for a in range(0, hidden.shape[0], chunk):
        h, t = hidden[a:a + chunk], targets[a:a + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(loss_fn, h, weight, t, soft_cap, use_reentrant=False)
        else:
            total = total + loss_fn(h, weight, t, soft_cap)
    return total


class CausalLMLoss(nn.Module):
    def __init__(self, model: nn.Module, ce_chunk: int = 4096):
        super().__init__()
        self.model = model
        self.ce_chunk = ce_chunk
        self.chunk_loss = chunk_loss  # training.compile.compile_regions puts a compiled form here

    def body(self, input_ids: Tensor, state=None, cu_seqlens: Tensor | None = None):
        m = self.model
        if hasattr(m, "stack"):  # NeurIPS family
            x = m.emb_dropout(m.token_embedding(input_ids))
            return m.stack(x, state, cu_seqlens=cu_seqlens)
        return m.backbone(input_ids, state, None, None, cu_seqlens=cu_seqlens)

    def forward(self, input_ids: Tensor, targets: Tensor, cu_seqlens: Tensor | None = None, state=None):
        B, S = input_ids.shape
        # packed rows: cu_seqlens counts the flattened B * S tokens, every row and document a segment; the
        # layers take the rows as they are (the sLSTM runs them side by side: S sequential steps, not B * S)
        hidden, state = self.body(input_ids, state, cu_seqlens)
        soft_cap = getattr(self.model.config, "output_logit_soft_cap", None)
        loss_sum = chunked_cross_entropy(hidden.reshape(B * S, -1), self.model.lm_head.weight, targets.reshape(-1),
                                         chunk=self.ce_chunk, soft_cap=soft_cap, loss_fn=self.chunk_loss)
        return loss_sum, (targets != IGNORE_INDEX).sum(), state


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute every residual block in the backward (activation checkpointing per block); the module
    structure and state-dict keys stay as they are."""
    for block in blocks_of(model):
        forward = block.forward
        block.forward = functools.partial(checkpoint, forward, use_reentrant=False)
