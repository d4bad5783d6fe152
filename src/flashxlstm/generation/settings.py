"""The keyword set of `generate`, transformers' names and meanings, resolved from three places in order:
the defaults below, a `generation_config` (transformers' GenerationConfig, a dict, or any object with those
attributes; fields it does not set, or sets to None, keep the default), then explicit keyword arguments.

Length: max_new_tokens (default 20) or max_length (prompt + new, transformers' total); when both are given
max_new_tokens wins, as in transformers. min_new_tokens / min_length keep EOS out until that many are chosen.
Sampling: do_sample, temperature, top_k, top_p (None or 1.0: off); repetition_penalty (1.0: off) divides
positive and multiplies negative logits of tokens already present in the row (prompt padding excluded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence


@dataclass
class GenerationSettings:
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int | None = None
    min_length: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False

    def new_tokens(self, prompt_length: int) -> tuple[int, int]:
        """(max, min) number of tokens to generate after a prompt of prompt_length tokens."""
        if self.max_new_tokens is not None:
            most = self.max_new_tokens
        elif self.max_length is not None:
            most = max(self.max_length - prompt_length, 0)
        else:
            most = 20
        if self.min_new_tokens is not None:
            least = self.min_new_tokens
        elif self.min_length is not None:
            least = max(self.min_length - prompt_length, 0)
        else:
            least = 0
        return most, min(least, most)

    def check(self) -> None:
        def count(name: str) -> None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"generate: {name} must be an int >= 0 or None, got {v!r}")

        for name in ("max_new_tokens", "max_length", "min_new_tokens", "min_length"):
            count(name)
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise ValueError(f"generate: temperature must be a finite number, got {t!r}")
        if self.do_sample and not t > 0:
            raise ValueError(f"generate: temperature must be > 0 for sampling, got {t!r} (do_sample=False is greedy)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"generate: top_k must be an int >= 1 (0 or None: off), got {self.top_k!r}")
        p = self.top_p
        if p is not None and (not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
            raise ValueError(f"generate: top_p must be in (0, 1] or None, got {p!r}")
        r = self.repetition_penalty
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not (math.isfinite(r) and r > 0):
            raise ValueError(f"generate: repetition_penalty must be a finite number > 0 (1.0: off), got {r!r}")
        eos = self.eos_token_id
        if eos is not None:
            ids = [eos] if isinstance(eos, int) else list(eos) if isinstance(eos, (list, tuple)) else None
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise ValueError(f"generate: eos_token_id must be an int >= 0 or a non-empty list of them, got {eos!r}")
        if self.pad_token_id is not None and (not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool)):
            raise ValueError(f"generate: pad_token_id must be an int or None, got {self.pad_token_id!r}")

    @property
    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def filters(self) -> tuple[int | None, float | None]:
        """(top_k, top_p) with the 'off' values normalised to None."""
        return (self.top_k or None), (None if self.top_p is None or self.top_p >= 1.0 else self.top_p)


NAMES = tuple(f.name for f in fields(GenerationSettings))


def resolve_settings(generation_config: Any = None, **kwargs: Any) -> GenerationSettings:
    """Defaults, then the generation_config's fields (None there means unset), then kwargs."""
    unknown = sorted(set(kwargs) - set(NAMES))
    if unknown:
        raise TypeError(f"generate: unexpected keyword argument(s) {unknown}; accepted: {sorted(NAMES)}")
    values: dict[str, Any] = {}
    if generation_config is not None:
        get = generation_config.get if isinstance(generation_config, dict) else (
            lambda name: getattr(generation_config, name, None))
        for name in NAMES:
            v = get(name)
            if v is not None:
                values[name] = v
        if isinstance(generation_config, dict):
            extra = sorted(set(generation_config) - set(NAMES))
            if extra:
                raise TypeError(f"generate: generation_config has unknown field(s) {extra}; accepted: {sorted(NAMES)}")
    values.update(kwargs)
    settings = GenerationSettings(**values)
    settings.check()
    return settings
