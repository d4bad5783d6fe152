"""Per-request sampling parameters, checked.

Temperature 0 is greedy decoding (argmax, the same choice as `generate(do_sample=False)`). Otherwise the
request samples with temperature, top-k and top-p; with `seed` its draws are reproducible whatever else is
in the batch (sampler.py chooses every row's token on the device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)  # strings that end the output (excluded from it)
    stop_token_ids: Sequence[int] = field(default_factory=tuple)  # ids that end it (in addition to EOS)
    ignore_eos: bool = False

    def check(self, max_tokens_limit: int | None = None) -> None:
        """Raise ValueError naming the first invalid field and what it accepts."""
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if max_tokens_limit is not None and self.max_tokens > max_tokens_limit:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds this server's limit of {max_tokens_limit}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be a number in [0, 100] (0: greedy), got {self.temperature!r}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 or null: off), got {self.top_k!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a non-empty string or a list of non-empty strings, got {list(self.stop)!r}")
        if len(self.stop) > 16:
            raise ValueError(f"stop may hold at most 16 strings, got {len(self.stop)}")
        if not all(is_int(t) for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a list of integers, got {list(self.stop_token_ids)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

