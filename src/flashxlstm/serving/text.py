"""Text around the engine: tokenizers (a checkpoint's tokenizer.json, or bytes), chat prompts, streamed
detokenisation with stop strings.

`TextStream` turns token ids into text as they arrive: it decodes a short window of recent ids and emits
only text that a later token cannot change (a window that ends in an incomplete UTF-8 sequence waits),
and holds back the last len(longest stop) - 1 characters while the output could still end in a stop
string, so streamed text never shows a stop string or anything after it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..generation.tokenizer import TOKENIZER_FILE, TextTokenizer

TOKENIZER_CONFIG = "tokenizer_config.json"


class ByteTokenizer:
    """Byte-level models (vocab 256, e.g. `flashxlstm train`): text <-> UTF-8 bytes."""

    vocab_size = 256

    def encode(self, text: str, bos_token_id: int | None = None) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class ServingTokenizer:
    """encode/decode plus what the chat endpoint needs: the checkpoint's chat template (if any) and the
    special tokens it refers to. `bos_token_id`: prepended to every prompt (the 7B family expects it)."""

    def __init__(self, inner: Any, bos_token_id: int | None = None, chat_template: str | None = None,
                 special_tokens: dict[str, str] | None = None):
        self.inner, self.bos_token_id = inner, bos_token_id
        self.chat_template = chat_template
        self.special_tokens = special_tokens or {}
        self._template = None

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, bos_token_id=self.bos_token_id)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(list(ids))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for a chat: the checkpoint's template, else one 'role: content' line per message
        followed by 'assistant:'."""
        if self.chat_template is None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # transformers' AddedToken serialisation
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_serving_tokenizer(directory: str | Path | None, vocab_size: int,
                           bos_token_id: int | None = None) -> ServingTokenizer:
    """The checkpoint directory's tokenizer.json (+ tokenizer_config.json's chat template and special
    tokens), or bytes for a vocabulary of 256 without one."""
    path = Path(directory) if directory is not None else None
    if path is not None and (path / TOKENIZER_FILE).is_file():
        template, special = None, {}
        if (path / TOKENIZER_CONFIG).is_file():
            cfg = json.loads((path / TOKENIZER_CONFIG).read_text())
            template = cfg.get("chat_template")
            if isinstance(template, list):  # named templates: the default one
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                template = named.get("default")
            if template is not None and not isinstance(template, str):
                raise ValueError(f"{path / TOKENIZER_CONFIG}: chat_template must be a string")
            for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
                text = _token_text(cfg.get(name))
                if text is not None:
                    special[name] = text
        return ServingTokenizer(TextTokenizer(path / TOKENIZER_FILE), bos_token_id, template, special)
    if vocab_size == ByteTokenizer.vocab_size:
        return ServingTokenizer(ByteTokenizer())
    where = f"in {path}" if path is not None else "(the model was given without a directory)"
    raise ValueError(f"no {TOKENIZER_FILE} {where}, and the vocabulary ({vocab_size}) is not byte-level (256): "
                     "the server needs a tokenizer to turn text into token ids")


class TextStream:
    """Incremental text of one request's output; finds stop strings."""

    def __init__(self, tokenizer: ServingTokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # ids[_prefix:_read] decode to the window's already-emitted text
        self._read = 0
        self._sent = 0  # characters of self.text handed out by take()
        self.stopped = False

    def add(self, token_id: int) -> bool:
        """Append one generated id; True when the output now ends at a stop string (text cut before it)."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        window = self.tokenizer.decode(self.ids[self._prefix:])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return False
        self._prefix, self._read = self._read, len(self.ids)
        return self._append(window[len(before):])

    def _append(self, delta: str) -> bool:
        start = max(0, len(self.text) - self._hold)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
        return self.stopped

    def finish(self) -> None:
        """The output ended: decode whatever the window still holds (an incomplete character as U+FFFD)."""
        if self.stopped or self._prefix >= len(self.ids):
            return
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        window = self.tokenizer.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        if len(window) > len(before):
            self._append(window[len(before):])

    def take(self, final: bool = False) -> str:
        """Text not handed out yet that can no longer change (all of it when final)."""
        end = len(self.text) if (final or self.stopped) else max(self._sent, len(self.text) - self._hold)
        out = self.text[self._sent:end]
        self._sent = end
        return out
