"""Loss bookkeeping: nats to bits per byte, and stateful evaluation over a whole validation text."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.batching import eval_windows


def bits_per_byte(loss_nats: float) -> float:
    """Cross-entropy per byte-level token, in bits (the token is one byte)."""
    return loss_nats / math.log(2)


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensor, batch_size: int, seq_len: int, device: torch.device) -> float:
    """Mean next-byte cross-entropy (nats) over `data`, reading it as `batch_size` streams and carrying
    the recurrent state across windows, so every byte is predicted from all bytes before it in its stream."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    try:
        for inputs, targets in eval_windows(data, batch_size, seq_len):
            out = model(inputs.to(device), state=state)
            logits, state = out.logits, out.state
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="sum")
            total += float(loss)
            count += targets.numel()
    finally:
        model.train(was_training)
    return total / count
