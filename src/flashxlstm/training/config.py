"""The settings of a byte-level training run: the shared loop settings (`training.settings.LoopSettings`) plus
the byte-level model, the text and the bookkeeping of `flashxlstm train`; round-trips through JSON.

The defaults are the embedded `flashxlstm train` job: a small byte-level xLSTM[1:1] on the pydoc topics,
tuned to finish well under 10 minutes on 2 CPU cores (see docs/training.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .settings import LoopSettings

# Settings a resumed run may change without breaking exact continuation.
RESUMABLE_OVERRIDES = ("steps", "device", "threads", "log_every", "sample_tokens", "sample_prompt", "progress",
                       "max_minutes", "eval_seq_len", "eval_batch_size")


DEFAULT_JOB_MAX_MINUTES = 8.0


@dataclass
class TrainConfig(LoopSettings):
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
    # optimisation (warm-up, weight decay, betas, clipping, evaluation cadence, seed, device: LoopSettings')
    steps: int = 600
    lr: float = 2e-3
    min_lr: float = 2e-4  # the end of the cosine decay
    carry_state: bool = True  # truncated BPTT: carry the recurrent state across consecutive windows
    # bookkeeping
    eval_batch_size: int = 16
    eval_seq_len: int = 512  # validation reads the same streams in longer windows (same result, faster)
    log_every: int = 10
    threads: int | None = None  # None: torch's default
    sample_tokens: int = 300
    sample_prompt: str = "The "
    progress: bool = True
    # Stop training (checkpointed, resumable) once the job has run this long; 0 or None: no limit. Only the
    # embedded default job of `flashxlstm train` sets one (DEFAULT_JOB_MAX_MINUTES), as a safety net that keeps
    # it under 10 minutes on a slow machine.
    max_minutes: float | None = None
    extra: dict = field(default_factory=dict)  # free-form notes stored with the run

    def check(self) -> None:
        super().check()
        self.check_positive_ints("embedding_dim", "num_blocks", "num_heads", "slstm_num_heads", "batch_size",
                                 "seq_len", "eval_batch_size", "eval_seq_len", "log_every")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
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
