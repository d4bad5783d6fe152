"""Packed documents as device tensors: where each document starts, which document each step belongs to.

`cu_seqlens` follows the FlashAttention convention: int offsets 0 = c_0 < c_1 < ... < c_N = S of N documents
packed into one row of S steps. Everything here is built with device operations whose shapes depend only on
S and N (N + 1 = cu_seqlens.numel(), a shape, not a value), so the packed forms of the cells run in one pass
with no host sync and no data-dependent shape: torch.compile(fullgraph=True) traces them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Layout(NamedTuple):
    start: Tensor  # (S,) bool: a document starts at this step
    doc: Tensor  # (S,) long: the document of each step
    first: Tensor  # (S,) long: the first step of each step's document
    ends: Tensor  # (N,) long: the last step of each document


def document_layout(cu_seqlens: Tensor, S: int, device: torch.device) -> Layout:
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    start = torch.zeros(S, dtype=torch.bool, device=device).index_fill(0, cu[:-1], True)
    doc = torch.cumsum(start.long(), 0) - 1
    return Layout(start, doc, cu[:-1].index_select(0, doc), cu[1:] - 1)
