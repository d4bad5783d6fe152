"""`flashxlstm` entry point: one subcommand per module, imported only when used.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "prepare": ("flashxlstm.cli.prepare", "tokenize text files / folders / JSONL into token shards for train --data"),
    "train": ("flashxlstm.cli.train", "train an xLSTM language model (default: a small byte-level model)"),
    "generate": ("flashxlstm.cli.generate", "generate text from a checkpoint"),
    "experiment": ("flashxlstm.cli.experiment", "run the paper's synthetic experiments"),
    "serve": ("flashxlstm.cli.serve", "serve a model over an OpenAI-compatible HTTP API"),
    "lm-eval": ("flashxlstm.cli.evaluate", "lm-evaluation-harness (lm_eval) with the flashxlstm model registered"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashxlstm", description="xLSTM end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (CLIError, OSError, ImportError, ValueError, TypeError) as e:  # OSError: disk full, permissions;
        # ImportError: an optional extra is missing (the message names it)
        print(f"flashxlstm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
