"""Reading a `flashxlstm prepare` directory: memory-mapped token shards, document starts, and the batches of a
run, each a pure function of (seed, step) and the same global batch for every world size.

Two ways to feed a recurrent model:
- packed (`PackedBatches`): windows of seq_len + 1 tokens in a seeded order per epoch; each window starts from
  an empty state and every document start inside it resets the state (cu_seqlens); the target that would
  predict a new document's first token from the previous document is ignored (-100).
- stream (`StreamBatches`): truncated BPTT; the training tokens are cut into one contiguous stream per global
  row, step t reads window t of each, and the state carries from one window to the next (reset each epoch).

Rank r of a world of W gets rows [r * G / W, (r + 1) * G / W) of the G global rows of a step.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .prepare import FORMAT

IGNORE_INDEX = -100


class TokenData:
    """The tokens of a prepared directory as one virtual array (shards memory-mapped, nothing read eagerly)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"--data {self.directory}: no meta.json (make one with `flashxlstm prepare`)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"--data {self.directory}: meta.json format {self.meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        dtype = np.dtype(self.meta["dtype"])
        self.shards, self.offsets = [], [0]
        for shard in self.meta["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["num_tokens"] * dtype.itemsize:
                raise ValueError(f"--data: shard {path} is missing or not {shard['num_tokens']} tokens long")
            self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
            self.offsets.append(self.offsets[-1] + shard["num_tokens"])
        self.num_tokens = self.offsets[-1]
        docs = self.directory / self.meta.get("documents", "documents.bin")
        self.doc_starts = np.memmap(docs, dtype=np.int64, mode="r") if docs.stat().st_size else np.zeros(0, np.int64)
        self.vocab_size = int(self.meta["vocab_size"])

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) as int64 (across shard borders)."""
        parts, i = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < end:
            lo = start - self.offsets[i]
            take = min(end, self.offsets[i + 1]) - start
            parts.append(np.asarray(self.shards[i][lo:lo + take], dtype=np.int64))
            start += take
            i += 1
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def starts_in(self, start: int, end: int) -> np.ndarray:
        """Document starts s with start < s < end, relative to `start`."""
        lo = int(np.searchsorted(self.doc_starts, start, side="right"))
        hi = int(np.searchsorted(self.doc_starts, end, side="left"))
        return np.asarray(self.doc_starts[lo:hi], dtype=np.int64) - start

    def split(self, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """(train range, validation range): validation is the tail from the first document start at or after
        (1 - val_fraction) of the tokens (the token position itself if no document starts there)."""
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        cut = int(self.num_tokens * (1 - val_fraction))
        k = int(np.searchsorted(self.doc_starts, cut, side="left"))
        if k < len(self.doc_starts) and self.doc_starts[k] < self.num_tokens - 1:
            cut = int(self.doc_starts[k])
        return (0, cut), (cut, self.num_tokens)

    def decode(self, ids) -> str:
        if self.meta["tokenizer"] == "bytes":
            return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.directory / "tokenizer.json")).decode(list(map(int, ids)))


@dataclass
class Batch:
    inputs: Tensor  # (rows, S) long
    targets: Tensor  # (rows, S) long, IGNORE_INDEX where nothing is to be predicted
    cu_seqlens: Tensor | None  # packed: offsets of the rows' documents in the (1, rows * S) flattened input
    reset_state: bool  # stream: start from an empty state


def pack_rows(data: TokenData, starts: list[int], seq_len: int) -> Batch:
    """Windows [s, s + seq_len + 1) as inputs/targets with the documents of every row as cu_seqlens."""
    rows, tgts, cu = [], [], []
    for r, s in enumerate(starts):
        tokens = torch.from_numpy(data.read(s, s + seq_len + 1))
        inside = data.starts_in(s, s + seq_len + 1)  # 1..seq_len
        target = tokens[1:].clone()
        target[torch.from_numpy(inside - 1)] = IGNORE_INDEX  # a new document's first token: not predictable
        rows.append(tokens[:-1])
        tgts.append(target)
        cu.append(r * seq_len)
        cu.extend((r * seq_len + inside[inside < seq_len]).tolist())
    cu.append(len(starts) * seq_len)
    return Batch(torch.stack(rows), torch.stack(tgts), torch.tensor(cu, dtype=torch.int64), False)


class PackedBatches:
    """Step t's rows for one rank: windows of a seeded per-epoch permutation, G per step."""

    def __init__(self, data: TokenData, token_range: tuple[int, int], seq_len: int, global_rows: int, seed: int):
        self.data, self.seq_len, self.global_rows, self.seed = data, seq_len, global_rows, seed
        self.lo, hi = token_range
        self.windows = (hi - self.lo - 1) // seq_len
        if self.windows < global_rows:
            raise ValueError(f"the training tokens ({hi - self.lo:,}) give {self.windows} windows of "
                             f"{seq_len} + 1, fewer than the {global_rows} rows of a step; use a smaller "
                             "--batch-size / --seq-len or more data")
        self._perm: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.windows)}
        return self._perm[epoch]

    def rows(self, step: int, first: int, count: int) -> Batch:
        starts = []
        for g in range(step * self.global_rows + first, step * self.global_rows + first + count):
            epoch, k = divmod(g, self.windows)
            starts.append(self.lo + int(self._order(epoch)[k]) * self.seq_len)
        return pack_rows(self.data, starts, self.seq_len)


class StreamBatches:
    """Step t's rows for one rank: window t (within the epoch) of G contiguous streams."""

    def __init__(self, data: TokenData, token_range: tuple[int, int], seq_len: int, global_rows: int, seed: int):
        self.data, self.seq_len, self.global_rows = data, seq_len, global_rows
        self.lo, hi = token_range
        self.stream_len = (hi - self.lo) // global_rows
        self.windows = (self.stream_len - 1) // seq_len
        if self.windows < 1:
            raise ValueError(f"the training tokens ({hi - self.lo:,}) are too few for {global_rows} streams of "
                             f"{seq_len} + 1 tokens; use a smaller --batch-size / --seq-len or more data")

    def rows(self, step: int, first: int, count: int) -> Batch:
        w = step % self.windows
        rows = [torch.from_numpy(self.data.read(s, s + self.seq_len + 1)) for s in
                (self.lo + b * self.stream_len + w * self.seq_len for b in range(first, first + count))]
        tokens = torch.stack(rows)
        return Batch(tokens[:, :-1], tokens[:, 1:].clone(), None, w == 0)


def validation_windows(data: TokenData, token_range: tuple[int, int], seq_len: int, max_windows: int | None
                       ) -> list[int]:
    """Start positions of consecutive packed windows over the validation range (at most max_windows)."""
    lo, hi = token_range
    n = max(0, (hi - lo - 1) // seq_len)
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the validation tokens ({hi - lo:,}) are fewer than one window of {seq_len} + 1; "
                         "use a larger --val-fraction or a smaller --seq-len")
    return [lo + k * seq_len for k in range(n)]
