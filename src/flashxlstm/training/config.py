"""The settings of a training run, as one dataclass that round-trips through JSON.

The defaults are the embedded `flashxlstm train` job: a small byte-level xLSTM[1:1] on the pydoc topics,
tuned to finish well under 10 minutes on 2 CPU cores (see README, "Training").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Settings a resumed run may change without breaking exact continuation.
RESUMABLE_OVERRIDES = ("device", "threads", "log_every", "sample_tokens", "sample_prompt", "progress", "max_minutes",
                       "eval_seq_len", "eval_batch_size")


DEFAULT_JOB_MAX_MINUTES = 8.0


@dataclass
class TrainConfig:
    # model (a byte-level xLSTM language model)
    embedding_dim: int = 128
    num_blocks: int = 4
    block_pattern: str = "xlstm[1:1]"  # "xlstm[a:b]": a mLSTM blocks per b sLSTM blocks
    num_heads: int = 4
    slstm_num_heads: int = 4
    tie_weights: bool = False
    dropout: float = 0.0
    # data
    text_file: str | None = None  # None: the embedded pydoc_data.topics corpus
    val_fraction: float = 0.1
    batch_size: int = 16
    seq_len: int = 128
    # optimisation
    steps: int = 600
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    carry_state: bool = True  # truncated BPTT: carry the recurrent state across consecutive windows
    # bookkeeping
    eval_every: int = 200
    eval_batch_size: int = 16
    eval_seq_len: int = 512  # validation reads the same streams in longer windows (same result, faster)
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # None: torch's default
    sample_tokens: int = 300
    sample_prompt: str = "The "
    progress: bool = True
    # Stop training (checkpointed, resumable) once the job has run this long; 0 or None: no limit. Only the
    # embedded default job of `flashxlstm train` sets one (DEFAULT_JOB_MAX_MINUTES), as a safety net that keeps
    # it under 10 minutes on a slow machine.
    max_minutes: float | None = None
    extra: dict = field(default_factory=dict)  # free-form notes stored with the run

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d).validated()

    def validated(self) -> "TrainConfig":
        """Self, after checking that every setting is usable; raises ValueError naming the bad one."""
        positive = ("embedding_dim", "num_blocks", "num_heads", "slstm_num_heads", "batch_size", "seq_len",
                    "steps", "eval_every", "eval_batch_size", "eval_seq_len", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_minutes is not None and not self.max_minutes >= 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens must be >= 0, got {self.sample_tokens}")
        if self.sample_tokens > 0 and not self.sample_prompt.encode("utf-8"):
            raise ValueError("the sample prompt (--prompt) is empty: give at least one character, or "
                             "--sample-tokens 0 for no sample")
        return self
