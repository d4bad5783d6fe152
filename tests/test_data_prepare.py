"""`flashxlstm prepare`: a multi-file corpus (text files, a folder, JSONL) round-trips text and document
boundaries through the token shards, for the byte tokenizer and a trained BPE; packed batches reset at
document starts and mask the targets across them."""
import json

import numpy as np
import pytest

from flashxlstm.cli.main import main
from flashxlstm.data.prepare import prepare
from flashxlstm.data.shards import IGNORE_INDEX, PackedBatches, StreamBatches, TokenData, pack_rows

DOCS = ["Hello, xLSTM!\nünïcödé 🙂 text.", "second document " * 30, "x", "a JSONL line", "another line " * 9,
        "the last file, in a folder"]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "folder" / ".hidden").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0])
    (root / "b.txt").write_text(DOCS[1])
    (root / "c.txt").write_text(DOCS[2])
    with open(root / "d.jsonl", "w") as f:
        f.write(json.dumps({"text": DOCS[3]}) + "\n\n" + json.dumps({"text": DOCS[4], "id": 7}) + "\n")
    (root / "folder" / "e.md").write_text(DOCS[5])
    (root / "folder" / ".hidden" / "skip.txt").write_text("never read")
    (root / "folder" / "image.png").write_bytes(b"\x89PNG")
    return root


def _documents(data: TokenData) -> list[str]:
    starts = list(data.doc_starts) + [data.num_tokens]
    return [data.decode(data.read(a, b)) for a, b in zip(starts, starts[1:])]


def test_bytes_round_trip_across_shards(tmp_path, corpus):
    inputs = [corpus / "a.txt", corpus / "b.txt", corpus / "c.txt", corpus / "d.jsonl", corpus / "folder"]
    meta = prepare(inputs, "bytes", tmp_path / "data", shard_tokens=100, log=lambda m: None)
    assert meta["num_documents"] == len(DOCS) and meta["dtype"] == "uint16" and len(meta["shards"]) > 3
    data = TokenData(tmp_path / "data")
    assert _documents(data) == DOCS
    assert data.num_tokens == sum(len(d.encode()) for d in DOCS)
    with pytest.raises(ValueError, match="not an empty directory"):
        prepare(inputs, "bytes", tmp_path / "data", log=lambda m: None)


def test_trained_bpe_and_tokenizer_json_round_trip(tmp_path, corpus, capsys):
    assert main(["prepare", "--input", str(corpus), "--tokenizer", "train:300", "--out", str(tmp_path / "bpe")]) == 0
    data = TokenData(tmp_path / "bpe")
    assert 256 < data.vocab_size <= 300 and data.num_tokens < sum(len(d.encode()) for d in DOCS)
    assert sorted(_documents(data)) == sorted(DOCS)
    again = ["prepare", "--input", str(corpus), "--tokenizer", str(tmp_path / "bpe" / "tokenizer.json"),
             "--out", str(tmp_path / "again")]
    assert main(again) == 0
    assert np.array_equal(TokenData(tmp_path / "again").read(0, data.num_tokens), data.read(0, data.num_tokens))
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    assert main(["prepare", "--input", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "bad.jsonl:1 has no string field 'text'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_packed_rows_reset_and_mask_at_document_starts(tmp_path, corpus):
    prepare([corpus], "bytes", tmp_path / "data", log=lambda m: None)
    data = TokenData(tmp_path / "data")
    starts = [int(s) for s in data.doc_starts]
    b = pack_rows(data, [starts[1] - 3, 0], seq_len=8)  # row 0 crosses into document 1 at position 3
    assert b.cu_seqlens.tolist() == [0, 3, 8, 16]
    assert b.targets[0, 2] == IGNORE_INDEX and (b.targets[0] != IGNORE_INDEX).sum() == 7
    assert b.inputs[0, 3] == data.read(starts[1], starts[1] + 1)[0]
    packed = PackedBatches(data, (0, data.num_tokens), 8, 4, seed=1)
    a, a2 = packed.rows(5, 0, 4), packed.rows(5, 2, 2)  # a rank's slice is a slice of the global batch
    assert np.array_equal(a.inputs[2:], a2.inputs)
    stream = StreamBatches(data, (0, data.num_tokens), 8, 2, seed=0)
    w0, w1 = stream.rows(0, 0, 2), stream.rows(1, 0, 2)
    assert w0.reset_state and not w1.reset_state and w1.inputs[0, 0] == w0.targets[0, -1]
