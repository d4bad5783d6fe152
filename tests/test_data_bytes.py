"""Byte corpora, the train/validation split, truncated-BPTT batching and the unigram baseline."""
import math

import pytest
import torch

from flashxlstm.data import (
    StreamBatcher, decode_bytes, encode_prompt, eval_windows, load_corpus, pydoc_topics_text, split_bytes,
    unigram_bits_per_byte,
)


def test_default_corpus_is_embedded_and_deterministic():
    text = pydoc_topics_text()
    assert len(text) > 100_000 and text == pydoc_topics_text()
    split = load_corpus(val_fraction=0.1)
    data = text.encode()
    assert split.train.dtype == torch.uint8
    assert len(split.train) + len(split.val) == len(data)
    assert bytes(split.val.tolist()) == data[len(split.train):]  # validation is the tail, unseen in training


def test_split_sizes_and_errors():
    train, val = split_bytes(b"abcdefghij", 0.2)
    assert bytes(train.tolist()) == b"abcdefgh" and bytes(val.tolist()) == b"ij"
    with pytest.raises(ValueError, match="too small"):
        split_bytes(b"abc", 0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        split_bytes(b"abcdef", 1.0)


def test_text_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_corpus(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)
    with pytest.raises(ValueError, match="directory"):
        load_corpus(tmp_path)
    f = tmp_path / "t.txt"
    f.write_bytes("héllo wörld\n".encode() * 10)
    split = load_corpus(f, val_fraction=0.25)
    assert split.source == str(f) and len(split.val) == math.ceil(len(f.read_bytes()) * 0.25)


def test_stream_batcher_windows_continue_each_other():
    data = torch.arange(200, dtype=torch.uint8)
    b = StreamBatcher(data, batch_size=3, seq_len=5, seed=1)
    assert b.stream_len == 66 and b.windows_per_epoch == 13
    w0, w1 = b.window(0), b.window(1)
    assert w0.reset_state and not w1.reset_state
    assert torch.equal(w0.targets[:, :-1], w0.inputs[:, 1:])  # targets are inputs shifted by one
    assert torch.equal(w1.inputs[:, 0], w0.targets[:, -1])  # row b of window 1 continues row b of window 0
    assert torch.equal(w0.inputs[:, 0], torch.tensor([0, 66, 132]))
    # a new epoch resets the state and rotates the streams; it is a pure function of (seed, step)
    w13 = b.window(13)
    assert w13.reset_state and w13.epoch == 1
    assert torch.equal(w13.inputs, StreamBatcher(data, 3, 5, seed=1).window(13).inputs)
    assert not torch.equal(w13.inputs, StreamBatcher(data, 3, 5, seed=2).window(13).inputs)
    assert torch.equal((w13.inputs[:, 0].long() - w0.inputs[:, 0].long()) % 200,
                       torch.full((3,), b.epoch_offset(1)))


def test_stream_batcher_rejects_short_text():
    with pytest.raises(ValueError, match="too short"):
        StreamBatcher(torch.zeros(20, dtype=torch.uint8), batch_size=4, seq_len=8)


def test_eval_windows_cover_every_byte_once():
    data = torch.arange(103) % 251
    windows = eval_windows(data.to(torch.uint8), batch_size=4, seq_len=7)
    targets = torch.cat([t for _, t in windows], dim=1)
    inputs = torch.cat([i for i, _ in windows], dim=1)
    assert targets.shape == (4, 24)  # 25 bytes per stream, the first has no prediction
    assert torch.equal(targets, data[:100].view(4, 25)[:, 1:].long())
    assert torch.equal(inputs, data[:100].view(4, 25)[:, :-1].long())
    tiny = eval_windows(torch.tensor([1, 2, 3], dtype=torch.uint8), batch_size=16, seq_len=8)
    assert sum(t.numel() for _, t in tiny) == 2  # too few bytes for 16 streams: fewer streams


def test_unigram_baseline():
    uniform = torch.arange(256, dtype=torch.uint8).repeat(4)
    assert unigram_bits_per_byte(uniform, uniform) == pytest.approx(8.0)
    skewed = torch.tensor([65] * 1000 + [66] * 10, dtype=torch.uint8)
    assert unigram_bits_per_byte(skewed, torch.tensor([65] * 10, dtype=torch.uint8)) < 0.5


def test_prompt_round_trip():
    ids = encode_prompt("é!")
    assert ids.shape == (1, 3) and ids.dtype == torch.long
    assert decode_bytes(ids[0]) == "é!"
    assert decode_bytes([0xC3]) == "\ufffd"  # a cut UTF-8 sequence prints as a replacement character
    with pytest.raises(ValueError, match="empty"):
        encode_prompt("")
