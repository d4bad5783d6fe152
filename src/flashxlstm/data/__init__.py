"""Datasets: byte-level corpora and batching."""
from .batching import StreamBatcher, Window, eval_windows
from .bytes import (
    VOCAB_SIZE,
    ByteSplit,
    decode_bytes,
    encode_prompt,
    load_corpus,
    pydoc_topics_text,
    read_text_bytes,
    split_bytes,
    unigram_bits_per_byte,
)

__all__ = [
    "VOCAB_SIZE", "ByteSplit", "StreamBatcher", "Window", "decode_bytes", "encode_prompt", "eval_windows",
    "load_corpus", "pydoc_topics_text", "read_text_bytes", "split_bytes", "unigram_bits_per_byte",
]
