"""`flashxlstm prepare --input PATH... [--hf-dataset D] --tokenizer T --out DATA_DIR`: token shards for
`train --data`."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=[],
                        help="text files, folders of them (recursed), or .jsonl files with a 'text' field")
    parser.add_argument("--tokenizer", default="bytes",
                        help="bytes (default), a tokenizer.json, or train:VOCAB (byte-level BPE trained on the input)")
    parser.add_argument("--out", required=True, help="a new directory for meta.json, token shards, documents.bin")
    hf = parser.add_argument_group("a Hugging Face dataset as (more) input (pip install 'flashxlstm[datasets]')")
    hf.add_argument("--hf-dataset", default=None,
                    help="a directory saved with save_to_disk, BUILDER:FILES (json:, parquet:, text:, csv:, arrow: "
                         "local files), or a name load_dataset takes (read streaming); each row is a document")
    hf.add_argument("--hf-split", default="train", help="the split to read (default %(default)s)")
    hf.add_argument("--hf-field", default="text", help="the string field holding each document (default %(default)s)")
    hf.add_argument("--hf-config", default=None, help="the dataset's configuration name, if it has several")
    parser.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file (default 2^28)")


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare

    prepare(args.input, args.tokenizer, args.out, shard_tokens=args.shard_tokens, hf_dataset=args.hf_dataset,
            hf_split=args.hf_split, hf_field=args.hf_field, hf_config=args.hf_config)
    return 0
