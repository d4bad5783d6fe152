"""Batches for truncated backpropagation through time over a byte stream.

The corpus is cut into `batch_size` contiguous streams; step t reads window t of every stream, so row b of
one batch continues row b of the previous batch and a stateful model can carry its recurrent state across
windows (the state is detached between windows, so gradients are truncated at `seq_len` but the context
is unbounded). When the windows of an epoch are used up, the streams are rotated by a random offset and the
state is reset. Everything is a pure function of (seed, step): the data position of a resumed run is just its
step count, with no iterator state to save.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Window:
    inputs: Tensor  # (B, T) long
    targets: Tensor  # (B, T) long: inputs shifted left by one byte
    reset_state: bool  # True on the first window of an epoch: start from an empty state
    epoch: int


class StreamBatcher:
    """Consecutive (inputs, targets) windows of `batch_size` parallel streams, indexed by step."""

    def __init__(self, data: Tensor, batch_size: int, seq_len: int, seed: int = 0):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if data.dim() != 1:
            raise ValueError(f"data must be a 1-D tensor of token ids, got shape {tuple(data.shape)}")
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.stream_len = len(data) // batch_size
        self.windows_per_epoch = (self.stream_len - 1) // seq_len
        if self.windows_per_epoch < 1:
            raise ValueError(
                f"the training text ({len(data)} bytes) is too short for batch_size={batch_size} x "
                f"seq_len={seq_len}: it needs at least {batch_size * (seq_len + 1)} bytes; "
                "use a smaller --batch-size / --seq-len or a longer text"
            )

    def epoch_offset(self, epoch: int) -> int:
        """Where the streams start in epoch `epoch` (0 in the first epoch, then random)."""
        if epoch == 0:
            return 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randint(len(self.data), (1,), generator=gen))

    def window(self, step: int) -> Window:
        epoch, w = divmod(step, self.windows_per_epoch)
        starts = torch.arange(self.batch_size) * self.stream_len + self.epoch_offset(epoch) + w * self.seq_len
        idx = (starts[:, None] + torch.arange(self.seq_len + 1)) % len(self.data)
        chunk = self.data[idx].long()
        return Window(inputs=chunk[:, :-1], targets=chunk[:, 1:], reset_state=(w == 0), epoch=epoch)


def eval_windows(data: Tensor, batch_size: int, seq_len: int) -> list[tuple[Tensor, Tensor]]:
    """The whole of `data` as consecutive windows of `batch_size` streams, for stateful evaluation.

    Every byte except the first of each stream (and the < batch_size bytes left over) is predicted once;
    the last window may be shorter than `seq_len`.
    """
    stream_len = len(data) // batch_size
    if stream_len < 2:
        batch_size = max(1, len(data) // 2)
        stream_len = len(data) // batch_size
    if stream_len < 2:
        raise ValueError(f"the validation text ({len(data)} bytes) is too short: it needs at least 2 bytes")
    streams = data[: batch_size * stream_len].view(batch_size, stream_len).long()
    out = []
    for start in range(0, stream_len - 1, seq_len):
        end = min(start + seq_len, stream_len - 1)
        out.append((streams[:, start:end], streams[:, start + 1 : end + 1]))
    return out
