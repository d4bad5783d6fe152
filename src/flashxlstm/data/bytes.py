"""Byte-level corpora: text in, a uint8 tensor of bytes out, split into training and validation.

A byte-level model needs no tokenizer: token ids are the 256 byte values, and a model trained on them
reports its validation loss directly in bits per byte. The default corpus is the documentation text in
`pydoc_data.topics`, which every CPython installation carries, so the default job needs no download.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

VOCAB_SIZE = 256
# The byte-level job holds its corpus in memory (a few copies while splitting and hashing); larger corpora go
# through `flashxlstm prepare` + `train --data`, which memory-maps token shards.
MAX_TEXT_BYTES = 1 << 30


@dataclass(frozen=True)
class ByteSplit:
    """A corpus as bytes, split into a training part and the validation part that follows it."""

    train: Tensor  # (N_train,) uint8
    val: Tensor  # (N_val,) uint8
    source: str  # where the text came from, for logs


def pydoc_topics_text() -> str:
    """The concatenated `pydoc_data.topics` documentation, topics in sorted order (deterministic)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise ValueError(
            "this Python has no pydoc_data.topics (the default corpus); pass --text-file PATH instead"
        ) from e
    return "\n\n".join(topics[name] for name in sorted(topics))


def read_text_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The raw bytes of a text file, with errors that say what was wrong. Reads at most `max_bytes` (+1 to
    notice more): a larger file, or an endless one such as /dev/zero, is refused without being read whole."""
    path = os.fspath(path)
    max_bytes = MAX_TEXT_BYTES if max_bytes is None else max_bytes
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"text file is a directory, expected a file: {path}")
    too_big = (f"text file is larger than {max_bytes:,} bytes, the limit of the in-memory byte-level corpus: "
               f"{path}; tokenize it into memory-mapped shards with `flashxlstm prepare` and train with --data")
    if os.path.isfile(path) and os.path.getsize(path) > max_bytes:
        raise ValueError(too_big)
    buf = bytearray()
    with open(path, "rb") as f:  # in pieces: a device or pipe has no size to check first
        while len(buf) <= max_bytes:
            piece = f.read(min(1 << 24, max_bytes + 1 - len(buf)))
            if not piece:
                break
            buf += piece
    if len(buf) > max_bytes:
        raise ValueError(too_big)
    data = bytes(buf)
    del buf
    if not data:
        raise ValueError(f"text file is empty: {path}")
    return data


def split_bytes(data: bytes, val_fraction: float, min_part: int = 2) -> tuple[Tensor, Tensor]:
    """Split bytes into (train, val): validation is the last `val_fraction` of the corpus.

    A contiguous tail (not random lines) keeps validation text unseen in training, like the usual
    byte-level benchmarks (enwik8). Both parts need at least `min_part` bytes (one input, one target).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data)
    n_val = max(min_part, math.ceil(n * val_fraction))
    n_train = n - n_val
    if n_train < min_part:
        raise ValueError(
            f"corpus too small: {n} bytes cannot give {min_part}+ training and {min_part}+ validation bytes "
            f"with val_fraction={val_fraction}"
        )
    all_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return all_bytes[:n_train].clone(), all_bytes[n_train:].clone()


def load_corpus(text_file: str | os.PathLike | None = None, val_fraction: float = 0.1) -> ByteSplit:
    """The training corpus: `text_file` if given, else the embedded pydoc topics, split for validation."""
    if text_file is None:
        data, source = pydoc_topics_text().encode("utf-8"), "pydoc_data.topics"
    else:
        data, source = read_text_bytes(text_file), os.fspath(text_file)
    train, val = split_bytes(data, val_fraction)
    return ByteSplit(train=train, val=val, source=source)


def unigram_bits_per_byte(train: Tensor, val: Tensor, smoothing: float = 1.0) -> float:
    """Bits per byte of `val` under the byte frequencies of `train` (add-`smoothing` counts).

    The baseline a language model must beat: it knows which bytes are common, nothing about context.
    """
    counts = torch.bincount(train.long(), minlength=VOCAB_SIZE).double() + smoothing
    log_p = counts.log2() - counts.sum().log2()
    return float(-log_p[val.long()].mean())


def encode_prompt(prompt: str) -> Tensor:
    """A prompt string as a (1, S) tensor of byte ids."""
    data = prompt.encode("utf-8")
    if not data:
        raise ValueError("the prompt is empty: give at least one character to condition on")
    return torch.tensor(list(data), dtype=torch.long).unsqueeze(0)


def decode_bytes(ids) -> str:
    """Byte ids back to text; bytes that are not valid UTF-8 become U+FFFD."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
