"""`flashxlstm serve`: an OpenAI-compatible HTTP server (continuous batching) for a checkpoint directory or
a hub id in the local cache. Needs the `serve` extra (fastapi, uvicorn).

    flashxlstm serve --model runs/default --port 8000
    curl localhost:8000/v1/completions -d '{"model": "default", "prompt": "The ", "max_tokens": 32}'
"""
from __future__ import annotations

import argparse

from .main import CLIError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (or a `flashxlstm train` run "
                        "directory), or a hub id already in the local Hugging Face cache")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="parameter dtype (default: as stored); recurrent states stay float32")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--prefill-tokens", type=int, default=512,
                        help="positions of one prefill slice: a long prompt is prefilled a slice per decode step, so "
                             "a decode step waits for at most one slice (default %(default)s)")
    parser.add_argument("--prefill-rows", type=int, default=4,
                        help="prompts one slice holds at most (shapes 1 x T, 2 x T/2, ...; default %(default)s)")
    parser.add_argument("--max-prompt-tokens", type=int, default=8192, help="longest prompt accepted (default %(default)s)")
    parser.add_argument("--max-tokens-limit", type=int, default=4096,
                        help="largest max_tokens a request may ask for (default %(default)s)")
    parser.add_argument("--no-cuda-graph", action="store_true", help="run the decode step eagerly on CUDA")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default %(default)s)")


def build(args: argparse.Namespace):
    """(engine, model name) for the arguments; the engine is not started."""
    import torch

    from ..serving import Engine, EngineConfig
    from ..serving.loading import load_for_serving

    for name in ("max_batch", "prefill_tokens", "prefill_rows", "max_prompt_tokens", "max_tokens_limit"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = None if args.dtype == "auto" else args.dtype
    model, tokenizer, directory = load_for_serving(args.model, dtype=dtype, device=device)
    config = EngineConfig(max_batch=args.max_batch, prefill_tokens=getattr(args, "prefill_tokens", 512),
                          prefill_rows=getattr(args, "prefill_rows", 4),
                          max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit,
                          cuda_graph=False if args.no_cuda_graph else None)
    from pathlib import Path

    given = Path(args.model).expanduser()
    name = args.served_model_name or (given.resolve().name if given.is_dir() else args.model)  # dir name or hub id
    return Engine(model, tokenizer, config), name


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serving.app import create_app
    except ImportError as e:
        raise CLIError(f"serving needs the `serve` extra (pip install 'flashxlstm[serve]'): {e}") from None
    engine, name = build(args)
    engine.start()
    print(f"flashxlstm serve: model '{name}' on http://{args.host}:{args.port} (max batch {args.max_batch}, "
          f"{engine.device}, cuda graphs {'on' if engine.slots.cuda_graph else 'off'})", flush=True)
    try:
        uvicorn.run(create_app(engine, name), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.stop()
    return 0
