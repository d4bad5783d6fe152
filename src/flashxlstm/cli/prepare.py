"""`flashxlstm prepare --input PATH... --tokenizer T --out DATA_DIR`: token shards for `train --data`."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True,
                        help="text files, folders of them (recursed), or .jsonl files with a 'text' field")
    parser.add_argument("--tokenizer", default="bytes",
                        help="bytes (default), a tokenizer.json, or train:VOCAB (byte-level BPE trained on the input)")
    parser.add_argument("--out", required=True, help="a new directory for meta.json, token shards, documents.bin")
    parser.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file (default 2^28)")


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    prepare(args.input, args.tokenizer, args.out, shard_tokens=args.shard_tokens)
    return 0
