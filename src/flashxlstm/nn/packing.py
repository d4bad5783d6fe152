"""Packed documents: several documents in one row, each starting from an empty state.

`cu_seqlens` follows the FlashAttention convention: int (N + 1,) offsets 0 = c_0 < c_1 < ... < c_N = B * S of
the N documents in a (B, S, ...) input, counted over its flattened B * S tokens; with B > 1 every row starts a
document (rows of packed documents, side by side). A layer given cu_seqlens computes every document as if it
ran alone (state None) and returns one final state per document (batch = N). Token-wise work and the
chunk-parallel mLSTM see the rows as one (1, B * S) sequence; the sLSTM recurrence runs the rows side by side,
so B rows of S tokens take S sequential steps, not B * S.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.mlstm_cell.checks import checked_before, remember_checked


def check_cu_seqlens(who: str, x: Tensor, cu_seqlens: Tensor, state) -> None:
    """One-line errors for a packed input: offsets from 0 to B * S, strictly increasing, every row starting a
    document, no state."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.is_floating_point():
        raise ValueError(f"{who}: cu_seqlens must be a 1-D integer tensor of N + 1 >= 2 document offsets")
    B, S = x.shape[0], x.shape[1]
    # a host sync, once per offsets tensor (every layer of a model gets the same one); traced, the op that reads
    # the offsets checks them
    if not torch.compiler.is_compiling() and not checked_before(cu_seqlens, ("rows", B, S)):
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != B * S or any(b <= a for a, b in zip(c, c[1:])):
            raise ValueError(f"{who}: cu_seqlens must rise strictly from 0 to the number of tokens B * S = {B * S}, "
                             f"got {c}")
        missing = sorted(set(range(0, B * S, S)) - set(c))
        if missing:
            raise ValueError(f"{who}: with {B} rows of {S} tokens every row must start a document; cu_seqlens lacks "
                             f"the row starts {missing[:8]}")
        remember_checked(cu_seqlens, ("rows", B, S))
    if state is not None:
        raise ValueError(f"{who}: packed documents start from an empty state; pass state=None with cu_seqlens")


def positions_in_document(cu_seqlens: Tensor, length: int) -> Tensor:
    """(length,) long: the index of each position within its document (0 at each document start)."""
    starts = torch.zeros(length, dtype=torch.long, device=cu_seqlens.device)
    c = cu_seqlens.long()
    starts[c[1:-1]] = c[1:-1] - c[:-2]  # at a document start, jump back by the previous document's length
    return torch.arange(length, device=cu_seqlens.device) - torch.cumsum(starts, 0)
