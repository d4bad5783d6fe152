"""Text in, text out for checkpoints that ship a tokenizer.json (the xLSTM-7B family's GPT-NeoX BPE).

`load_tokenizer(dir)` wraps the `tokenizers` package; `TextStreamer` prints tokens as they are generated
(decoding the whole continuation each time and printing the new suffix, so multi-token characters never
print half); `generate_text` encodes a prompt (prepending BOS when the model's config names one),
generates and streams.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from .generate import generate

TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception type for a bad file
            raise ValueError(f"cannot read tokenizer {path}: {e}") from None

    def encode(self, text: str, bos_token_id: int | None = None) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if bos_token_id is not None and (not ids or ids[0] != bos_token_id):
            ids = [bos_token_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(directory: str | Path) -> TextTokenizer | None:
    """The directory's tokenizer.json as a TextTokenizer, or None if it has none."""
    path = Path(directory) / TOKENIZER_FILE
    return TextTokenizer(path) if path.is_file() else None


class TextStreamer:
    """A `generate` streamer for one sequence: skips the prompt, prints decoded text as it grows."""

    def __init__(self, tokenizer: TextTokenizer, out: TextIO | None = None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""
        self._prompt_seen = False

    def put(self, tokens: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in tokens.reshape(-1))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
        self.printed = text

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
        self.out.write("\n")
        self.out.flush()
        self.printed = text


def generate_text(
    model: torch.nn.Module, tokenizer: TextTokenizer, prompt: str, *, max_new_tokens: int = 200,
    stream: bool = True, out: TextIO | None = None, add_bos: bool = True, **generate_kwargs: Any,
) -> str:
    """Encode `prompt`, generate up to max_new_tokens (stopping at the config's EOS), stream to `out`
    (default stdout) unless stream=False; returns the continuation's text."""
    config = getattr(model, "config", None)
    bos = getattr(config, "bos_token_id", None) if add_bos else None
    ids = tokenizer.encode(prompt, bos_token_id=bos)
    if not ids:
        raise ValueError("generate: the prompt encodes to no tokens")
    device = next(model.parameters()).device
    generate_kwargs.setdefault("eos_token_id", getattr(config, "eos_token_id", None))
    generate_kwargs.setdefault("pad_token_id", getattr(config, "pad_token_id", None))
    streamer = TextStreamer(tokenizer, out) if stream else None
    tokens = generate(model, torch.tensor([ids], device=device), max_new_tokens, streamer=streamer, **generate_kwargs)
    new = tokens[0, len(ids):].tolist()
    eos = generate_kwargs["eos_token_id"]
    stops = [i for i, t in enumerate(new) if t in ([eos] if isinstance(eos, int) else list(eos or []))]
    return tokenizer.decode(new[: stops[0]] if stops else new)
