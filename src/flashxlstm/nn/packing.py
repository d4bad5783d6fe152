"""Packed documents: several documents in one row, each starting from an empty state.

`cu_seqlens` follows the FlashAttention convention: int (N + 1,) offsets 0 = c_0 < c_1 < ... < c_N = S of the
N documents in a (1, S, ...) input. A layer given cu_seqlens computes every document as if it ran alone (state
None) and returns one final state per document (batch = N).
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_cu_seqlens(who: str, x: Tensor, cu_seqlens: Tensor, state) -> None:
    """One-line errors for a packed input: B == 1, offsets from 0 to S, strictly increasing, no state."""
    if x.shape[0] != 1:
        raise ValueError(f"{who}: packed documents (cu_seqlens) need batch size 1, got {x.shape[0]}")
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.is_floating_point():
        raise ValueError(f"{who}: cu_seqlens must be a 1-D integer tensor of N + 1 >= 2 document offsets")
    if not torch.compiler.is_compiling():  # a host sync; traced, the op that reads the offsets checks them
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != x.shape[1] or any(b <= a for a, b in zip(c, c[1:])):
            raise ValueError(f"{who}: cu_seqlens must rise strictly from 0 to the sequence length {x.shape[1]}, "
                             f"got {c}")
    if state is not None:
        raise ValueError(f"{who}: packed documents start from an empty state; pass state=None with cu_seqlens")


def positions_in_document(cu_seqlens: Tensor, length: int) -> Tensor:
    """(length,) long: the index of each position within its document (0 at each document start)."""
    starts = torch.zeros(length, dtype=torch.long, device=cu_seqlens.device)
    c = cu_seqlens.long()
    starts[c[1:-1]] = c[1:-1] - c[:-2]  # at a document start, jump back by the previous document's length
    return torch.arange(length, device=cu_seqlens.device) - torch.cumsum(starts, 0)
