"""The forecaster's configuration: one dataclass, saved as config.json next to the weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROLLOUTS = ("mask", "median")


@dataclass
class ForecastConfig:
    """patch_size: time steps per input and output patch. dim, num_blocks, num_heads: the sLSTM stack.
    ffn_factor: the gated feed-forward's inner width over dim. hidden_factor: the input and output residual
    blocks' hidden width over dim. quantiles: the levels the head predicts (sorted, strictly inside (0, 1),
    must include 0.5 for the median). max_context: the longest context `forecast` reads (older steps are
    dropped; 0 keeps all). rollout: how horizons beyond one patch are produced ("mask": the next input patch
    is all missing, as TiRex's contiguous patch masking trains for; "median": the predicted median is fed
    back as if observed). backend: the sLSTM op backend ("auto": Triton on CUDA, fused elsewhere)."""

    patch_size: int = 32
    dim: int = 256
    num_blocks: int = 4
    num_heads: int = 4
    ffn_factor: float = 4 / 3
    hidden_factor: float = 2.0
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    max_context: int = 2048
    rollout: str = "mask"
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.quantiles = tuple(float(q) for q in self.quantiles)
        name = type(self).__name__
        for field in ("patch_size", "dim", "num_blocks", "num_heads"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{name}: {field} must be >= 1, got {getattr(self, field)}")
        if self.dim % self.num_heads:
            raise ValueError(f"{name}: dim {self.dim} must be divisible by num_heads {self.num_heads}")
        qs = self.quantiles
        if not qs or any(not 0 < q < 1 for q in qs) or any(a >= b for a, b in zip(qs, qs[1:])):
            raise ValueError(f"{name}: quantiles must be strictly increasing levels in (0, 1), got {qs}")
        if 0.5 not in qs:
            raise ValueError(f"{name}: quantiles must include 0.5 (the median), got {qs}")
        if self.rollout not in ROLLOUTS:
            raise ValueError(f"{name}: rollout must be one of {ROLLOUTS}, got {self.rollout!r}")
        if self.max_context < 0:
            raise ValueError(f"{name}: max_context must be >= 0 (0: no limit), got {self.max_context}")
        if self.ffn_factor <= 0 or self.hidden_factor <= 0:
            raise ValueError(f"{name}: ffn_factor and hidden_factor must be > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ForecastConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config fields {unknown}")
        return cls(**d)
