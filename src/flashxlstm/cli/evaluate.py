"""`flashxlstm lm-eval ARGS`: lm-evaluation-harness's own command line with the `flashxlstm` model registered.

    flashxlstm lm-eval --model flashxlstm --model_args pretrained=DIR --tasks hellaswag --batch_size 16

Every argument goes to lm_eval unchanged (see `flashxlstm lm-eval --help`); the model and its model_args are
described in flashxlstm.integrations.lm_eval. Needs the `eval` extra (`pip install flashxlstm[eval]`).
"""
from __future__ import annotations

import argparse

from .main import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # no option of ours: every token, --flags included, is lm_eval's (a prefix no argument starts with)
    parser.prefix_chars = "\x00"
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments of lm_eval")


def run(args: argparse.Namespace) -> int:
    try:
        from ..integrations import lm_eval as integration
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("lm_eval"):
            raise
        raise CLIError("lm-evaluation-harness is not installed: pip install 'flashxlstm[eval]'") from None
    integration.main(args.lm_eval_args)
    return 0
