"""`flashxlstm prepare`: text files, folders of them, or JSONL (a `text` field per line) -> token shards.

    DATA_DIR/meta.json          format, dtype, vocab_size, tokenizer, num_tokens, num_documents, shards, sources
    DATA_DIR/tokens-00000.bin   raw token ids (uint16 when the vocabulary fits, else uint32), read by np.memmap
    DATA_DIR/documents.bin      int64 offset of each document's first token in the concatenated token stream
    DATA_DIR/tokenizer.json     the tokenizer (HF tokenizers), unless the tokenizer is `bytes`

Each input file is a document, and so is each JSONL line; with `hf_dataset` (the `datasets` extra, see
data/hf_source.py) each row of a Hugging Face dataset's split is one more document, after the files. Tokenizers: `bytes` (ids = the UTF-8 bytes, 256
symbols), a path to a `tokenizer.json`, or `train:VOCAB` (a byte-level BPE of VOCAB symbols trained on the
input with HF tokenizers). The input is read one document at a time and tokens are written in buffered
pieces, so memory stays bounded by the largest document plus the write buffer; a document larger than
`MAX_DOCUMENT_BYTES` is refused with a message (split it into files). The output directory is written
atomically: a temp directory, then one rename.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..checkpoints.atomic import atomic_directory, write_json_atomic

FORMAT = "flashxlstm-tokens-v1"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".py", ".html", ".tex", ""}
MAX_DOCUMENT_BYTES = 256 << 20
_WRITE_BUFFER_TOKENS = 1 << 20


def iter_input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The files behind `inputs` (folders recursed, sorted, hidden entries skipped), in a fixed order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"prepare: input not found: {p}")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
            files += [f for f in found if f.suffix.lower() in TEXT_SUFFIXES | {".jsonl"}]
        else:
            files.append(p)
    if not files:
        raise ValueError(f"prepare: no input files found in {', '.join(map(str, inputs))}")
    return files


def iter_documents(files: list[Path]) -> Iterator[str]:
    """Each text file whole, and each JSONL line's `text`, one at a time."""
    for f in files:
        if f.suffix.lower() == ".jsonl":
            with open(f, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    if len(line) > MAX_DOCUMENT_BYTES:
                        raise ValueError(f"prepare: {f}:{n} is larger than {MAX_DOCUMENT_BYTES:,} bytes")
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"prepare: {f}:{n} is not valid JSON ({e.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise ValueError(f"prepare: {f}:{n} has no string field 'text'")
                    if record["text"]:
                        yield record["text"]
        else:
            if f.is_file() and f.stat().st_size > MAX_DOCUMENT_BYTES:
                raise ValueError(f"prepare: {f} is larger than {MAX_DOCUMENT_BYTES:,} bytes, the limit for one "
                                 "document; split it into several files")
            with open(f, "rb") as fh:
                data = fh.read(MAX_DOCUMENT_BYTES + 1)
            if len(data) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"prepare: {f} is larger than {MAX_DOCUMENT_BYTES:,} bytes (or endless)")
            text = data.decode("utf-8", errors="replace")
            if text:
                yield text


@dataclass
class Tokenizer:
    name: str  # "bytes" or the tokenizers description
    vocab_size: int
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    hf: object | None = None  # the tokenizers.Tokenizer, saved as tokenizer.json


def _tokenizers():
    try:
        import tokenizers
    except ModuleNotFoundError:
        raise ModuleNotFoundError("prepare: this tokenizer needs the 'tokenizers' package: "
                                  "pip install 'flashxlstm[train]'") from None
    return tokenizers


def _from_hf(tok, name: str) -> Tokenizer:
    return Tokenizer(name=name, vocab_size=tok.get_vocab_size(with_added_tokens=True),
                     encode=lambda text: tok.encode(text, add_special_tokens=False).ids,
                     decode=lambda ids: tok.decode(list(map(int, ids)), skip_special_tokens=False), hf=tok)


def make_tokenizer(spec: str, files: list[Path] | Callable[[], Iterator[str]]) -> Tokenizer:
    """`bytes`, a tokenizer.json path, or `train:VOCAB` (trained on the documents of `files`, or on those
    a callable yields)."""
    if spec == "bytes":
        return Tokenizer(name="bytes", vocab_size=256, encode=lambda text: list(text.encode("utf-8")),
                         decode=lambda ids: bytes(int(i) for i in ids).decode("utf-8", errors="replace"))
    if spec.startswith("train:"):
        try:
            vocab = int(spec.split(":", 1)[1])
        except ValueError:
            vocab = 0
        if vocab < 257:
            raise ValueError(f"prepare: --tokenizer train:VOCAB needs an integer VOCAB > 256, got {spec!r}")
        tk = _tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(files() if callable(files) else iter_documents(files), trainer=trainer)
        return _from_hf(tok, f"byte-level BPE trained on the input (vocab {vocab})")
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"prepare: --tokenizer must be 'bytes', 'train:VOCAB' or a tokenizer.json file, got {spec!r}")
    tk = _tokenizers()
    try:
        tok = tk.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception type for a bad file
        raise ValueError(f"prepare: cannot read tokenizer {path}: {e}") from None
    return _from_hf(tok, str(path))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int):
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.shards: list[dict] = []
        self.total = 0
        self._file = None
        self._in_shard = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._open()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            self._file.write(ids[:take].astype(self.dtype, copy=False).tobytes())
            self._in_shard += take
            self.shards[-1]["num_tokens"] += take
            self.total += take
            ids = ids[take:]

    def _open(self) -> None:
        self.close()
        name = f"tokens-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self._in_shard = 0
        self.shards.append({"file": name, "num_tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def prepare(inputs: list[str | os.PathLike], tokenizer: str, out_dir: str | os.PathLike, *,
            shard_tokens: int = 1 << 28, log: Callable[[str], None] = print, hf_dataset: str | None = None,
            hf_split: str = "train", hf_field: str = "text", hf_config: str | None = None) -> dict:
    """Tokenize `inputs` (and the rows of `hf_dataset`, if given) into `out_dir` (see the module docstring);
    returns meta.json's content."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"prepare: --out {out_dir} exists and is not an empty directory; choose a new one")
    if shard_tokens < 1:
        raise ValueError(f"prepare: shard_tokens must be >= 1, got {shard_tokens}")
    if not inputs and hf_dataset is None:
        raise ValueError("prepare: give --input PATH... and/or --hf-dataset")
    files = iter_input_files(inputs) if inputs else []

    def documents() -> Iterator[str]:
        yield from iter_documents(files)
        if hf_dataset is not None:
            from .hf_source import iter_hf_documents

            yield from iter_hf_documents(hf_dataset, hf_split, hf_field, hf_config)

    tok = make_tokenizer(tokenizer, documents)
    dtype = token_dtype(tok.vocab_size)
    with atomic_directory(out_dir) as tmp:
        writer = _ShardWriter(tmp, dtype, shard_tokens)
        starts, buffer, buffered = [], [], 0
        with open(tmp / "documents.bin", "wb") as doc_file:
            for text in documents():
                ids = tok.encode(text)
                if not ids:
                    continue
                starts.append(writer.total + buffered)
                buffer.append(np.asarray(ids, dtype=np.int64))
                buffered += len(ids)
                if buffered >= _WRITE_BUFFER_TOKENS:
                    writer.write(np.concatenate(buffer))
                    buffer, buffered = [], 0
                if len(starts) >= 1 << 16:
                    doc_file.write(np.asarray(starts, dtype=np.int64).tobytes())
                    starts = []
            if buffer:
                writer.write(np.concatenate(buffer))
            doc_file.write(np.asarray(starts, dtype=np.int64).tobytes())
        writer.close()
        num_docs = (tmp / "documents.bin").stat().st_size // 8
        if writer.total == 0:
            raise ValueError(f"prepare: the input ({len(files)} file(s)"
                             + (f", dataset {hf_dataset}" if hf_dataset else "") + ") holds no text")
        if tok.hf is not None:
            tok.hf.save(str(tmp / "tokenizer.json"))
        meta = {"format": FORMAT, "dtype": dtype.name, "vocab_size": tok.vocab_size, "tokenizer": tok.name,
                "num_tokens": writer.total, "num_documents": num_docs, "shards": writer.shards,
                "documents": "documents.bin", "sources": [str(f) for f in files[:1000]],
                "num_sources": len(files)}
        if hf_dataset is not None:
            meta["hf_dataset"] = {"dataset": hf_dataset, "split": hf_split, "field": hf_field, "config": hf_config}
        write_json_atomic(tmp / "meta.json", meta)
    log(f"prepare: {len(files)} file(s)" + (f" + dataset {hf_dataset} ({hf_split})" if hf_dataset else "")
        + f", {num_docs:,} documents, {writer.total:,} tokens ({dtype.name}, vocab "
        f"{tok.vocab_size:,}, tokenizer {tok.name}) -> {out_dir}")
    return meta
