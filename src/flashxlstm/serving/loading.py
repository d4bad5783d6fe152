"""A model and its tokenizer for serving, from a checkpoint directory or a hub id already in the local cache.

Nothing is downloaded: a hub id ("NX-AI/xLSTM-7b") resolves to its snapshot in the Hugging Face cache
(`huggingface-cli download ID` puts it there), else the error says so.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .text import ServingTokenizer, load_serving_tokenizer


def resolve_model_dir(model: str) -> Path:
    """A directory holding a checkpoint: `model` itself, its checkpoint/ (a `flashxlstm train` run), or the
    cached snapshot of the hub id `model`."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "checkpoint" / "config.json").exists():
            return path / "checkpoint"
        return path
    if path.exists():
        raise ValueError(f"--model {model}: expected a checkpoint directory, got a file")
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"--model {model}: no such directory (a hub id looks like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise FileNotFoundError(f"--model {model}: no such directory, and huggingface_hub (to look the id up in the "
                                "local cache) is not installed") from None
    try:
        return Path(snapshot_download(model, local_files_only=True))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"--model {model}: no such directory and not in the local Hugging Face cache; the "
                                f"server never downloads: run `huggingface-cli download {model}` first") from None


def load_for_serving(model: str, dtype: torch.dtype | str | None = None,
                     device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ServingTokenizer, Path]:
    """(model in eval mode, its tokenizer, the directory) for `model` (see resolve_model_dir)."""
    from ..models.auto import from_pretrained

    directory = resolve_model_dir(model)
    net = from_pretrained(directory, dtype=dtype, device=device)
    config = net.config
    has_tokenizer = (directory / "tokenizer.json").is_file()
    bos = getattr(config, "bos_token_id", None) if has_tokenizer else None  # tokenized families expect BOS
    return net, load_serving_tokenizer(directory, int(config.vocab_size), bos_token_id=bos), directory
