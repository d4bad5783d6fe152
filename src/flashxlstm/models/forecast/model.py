"""xLSTMForecaster: a TiRex-style zero-shot forecaster (Auer et al., 2025, arXiv 2505.23719), clean-room from
the paper, on flashxlstm's sLSTM blocks.

    context (B, T) -> instance scaling (z-score of the observed values) -> NaN to 0 with a mask channel
    -> non-overlapping patches of P steps, left-padded (masked) so the last patch ends at the last step
    -> input residual block on [values, mask] (2P) -> D
    -> sLSTM blocks (pre-norm sLSTM layer + gated feed-forward, residual)
    -> RMSNorm -> output residual block D -> P x Q quantiles: token j predicts patch j + 1

Horizons beyond one patch roll forward one patch at a time (config.rollout): "mask" feeds an all-missing
patch (the paper's multi-patch inference, trained by contiguous patch masking), "median" feeds the predicted
median as if observed. Quantiles are sorted per step, so they never cross.

Leading patches with no observed value are skipped, per series: they leave the recurrent state where it
starts, so a context with an all-NaN prefix forecasts exactly like the context without it, and left-padded
series of different lengths forecast like each series alone.

Streaming: `stream(context)` reads a context once and keeps the recurrent state; `update(stream, values)`
advances it over new observations (whole patches run through the cells, a partial patch waits); and
`forecast(stream, horizon)` forecasts from it without re-reading anything. The result equals re-reading the
whole history with the stream's scaling (tests/test_forecast_model.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoints.atomic import atomic_directory, checked_directory, read_json_object, write_json_atomic
from ...checkpoints.strict import load_strict
from ...nn.blocks import sLSTMBlock
from ...nn.feedforward import GatedFeedForward, up_proj_dim
from ...nn.large_norms import RMSNorm
from ...nn.state import merge_rows, select_rows
from .config import ForecastConfig
from .inputs import ContextBatch, instance_scale, to_context_batch

MODEL_TYPE = "flashxlstm-forecast"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class ResidualBlock(nn.Module):
    """y = W2 silu(W1 x) + W_skip x: the input and output layers (the paper's two-layer residual blocks)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.skip = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.silu(self.hidden(x))) + self.skip(x)


@dataclass
class ForecastOutput:
    """quantiles (B, H, Q) in the data's units, levels ascending; `median` (B, H). For pandas input, `index` is
    the horizon's time index and `columns` the series' names (`to_pandas()` gives a DataFrame per level)."""

    quantiles: Tensor
    quantile_levels: tuple[float, ...]
    index: Any = None
    columns: list | None = None

    @property
    def median(self) -> Tensor:
        return self.quantile(0.5)

    def quantile(self, level: float) -> Tensor:
        if level not in self.quantile_levels:
            raise KeyError(f"quantile level {level} was not forecast; levels: {self.quantile_levels}")
        return self.quantiles[..., self.quantile_levels.index(level)]

    def to_pandas(self, level: float = 0.5):
        """The forecast at one quantile level as a DataFrame: rows = horizon index, columns = series."""
        import pandas as pd

        index = self.index if self.index is not None else pd.RangeIndex(self.quantiles.shape[1])
        columns = self.columns if self.columns is not None else list(range(self.quantiles.shape[0]))
        return pd.DataFrame(self.quantile(level).T.cpu().numpy(), index=index, columns=columns)


@dataclass(frozen=True)
class ForecastStream:
    """A forecaster's reading of B series so far (immutable: `update` returns a new one).

    state: the recurrent state after the last complete patch; next_patch (B, P, Q): the normalised
    prediction of the patch after it; pending (B, k), k < P: normalised observations of the patch in progress
    (NaN: missing); loc, scale (B, 1): the instance scaling fixed by the first context; pad_left: masked steps
    before the first observation (the patch grid); length: observations read (context included)."""

    state: tuple
    next_patch: Tensor
    pending: Tensor
    loc: Tensor
    scale: Tensor
    pad_left: int
    length: int


class xLSTMForecaster(nn.Module):
    model_type = MODEL_TYPE

    def __init__(self, config: ForecastConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = ForecastConfig(**kwargs)
        elif kwargs:
            config = replace(config, **kwargs)
        self.config = config
        P, D, Q = config.patch_size, config.dim, len(config.quantiles)
        hidden = max(8, round(config.hidden_factor * D))
        self.input_block = ResidualBlock(2 * P, hidden, D)
        inner = up_proj_dim(D, config.ffn_factor)
        self.blocks = nn.ModuleList(
            sLSTMBlock(D, ffn=GatedFeedForward(D, inner, num_blocks=config.num_blocks), num_heads=config.num_heads,
                       conv1d_kernel_size=0, block_idx=i, num_blocks=config.num_blocks, backend=config.backend)
            for i in range(config.num_blocks))
        self.norm = RMSNorm(D)
        self.head = ResidualBlock(D, hidden, P * Q)

    # ----------------------------------------------------------------- the network on normalised patches
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int, device=None) -> tuple:
        return tuple(b.initial_state(batch_size, device, self.dtype) for b in self.blocks)

    def _stack(self, values: Tensor, mask: Tensor, state: tuple | None) -> tuple[Tensor, tuple]:
        """values, mask (B, N, P) -> quantiles (B, N, P, Q) (float32, normalised, unsorted) and the state."""
        B, N, P = values.shape
        x = self.input_block(torch.cat([values, mask], dim=-1).to(self.dtype))
        new_state = []
        for j, block in enumerate(self.blocks):
            x, st = block(x, None if state is None else state[j])
            new_state.append(st)
        y = self.head(self.norm(x)).float()
        return y.view(B, N, P, len(self.config.quantiles)), tuple(new_state)

    def forward(self, values: Tensor, mask: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        """values (B, N, P) normalised with 0 at missing steps, mask (B, N, P) 1 = observed; returns the
        quantiles (B, N, P, Q) of each next patch and the state after patch N.

        From state=None, each row's leading patches without any observed step are skipped (their outputs
        are 0 and they leave the state at its start); a row with no observed step at all keeps the initial
        state. With a state given, every patch runs."""
        if values.dim() != 3 or values.shape != mask.shape or values.shape[-1] != self.config.patch_size:
            raise ValueError(f"xLSTMForecaster: values and mask must both have shape (B, N, "
                             f"{self.config.patch_size}), got {tuple(values.shape)} and {tuple(mask.shape)}")
        if state is not None:
            return self._stack(values, mask, state)
        B, N, P = values.shape
        observed = (mask > 0).any(-1)                                   # (B, N)
        first = observed.float().argmax(1)                              # the first patch with an observation
        first = torch.where(observed.any(1), first, torch.full_like(first, N))
        if bool((first == 0).all()):
            return self._stack(values, mask, None)
        out = values.new_zeros(B, N, P, len(self.config.quantiles), dtype=torch.float32)
        state = self.initial_state(B, values.device)
        for skip in first.unique().tolist():
            if skip == N:
                continue
            rows = (first == skip).nonzero().squeeze(1)
            y, st = self._stack(values[rows, skip:], mask[rows, skip:], None)
            out[rows, skip:] = y
            state = merge_rows(state, st, rows)
        return out, state

    # ----------------------------------------------------------------- forecasting
    def _patches(self, x: Tensor, pad_left: int, pad_right: int = 0) -> tuple[Tensor, Tensor]:
        """Normalised (B, T) with NaN -> values, mask (B, N, P) on the model's device, padding masked."""
        x = F.pad(x, (pad_left, pad_right), value=float("nan"))
        mask = torch.isfinite(x)
        vals = torch.where(mask, x, torch.zeros_like(x))
        P = self.config.patch_size
        to = lambda t: t.view(t.shape[0], -1, P).to(device=self.device, dtype=torch.float32)
        return to(vals), to(mask.to(x.dtype))

    def _roll(self, state: tuple, first: Tensor, horizon_steps: int, rollout: str) -> Tensor:
        """Predictions (B, >= horizon_steps, Q) starting with `first` (B, n, Q): one patch per step, each from an
        all-missing input patch ("mask") or from the previous patch's median ("median")."""
        preds, total = [first], first.shape[1]
        nxt = first[:, -self.config.patch_size:]
        mid = self.config.quantiles.index(0.5)
        while total < horizon_steps:
            if rollout == "mask":
                vals = torch.zeros(nxt.shape[0], 1, self.config.patch_size, device=self.device)
                mask = torch.zeros_like(vals)
            else:
                vals = nxt.sort(dim=-1).values[..., mid][:, None]
                mask = torch.ones_like(vals)
            out, state = self._stack(vals, mask, state)
            nxt = out[:, 0]
            preds.append(nxt)
            total += nxt.shape[1]
        return torch.cat(preds, dim=1)

    def _select_levels(self, q: Tensor, levels: Sequence[float] | None) -> tuple[Tensor, tuple[float, ...]]:
        own = self.config.quantiles
        if levels is None:
            return q, own
        levels = tuple(float(v) for v in levels)
        if not levels or any(not own[0] <= v <= own[-1] for v in levels):
            raise ValueError(f"forecast: quantiles must lie in [{own[0]}, {own[-1]}] (the levels the model "
                             f"predicts: {own}), got {levels}")
        grid = torch.tensor(own, dtype=q.dtype, device=q.device)
        cols = []
        for v in levels:  # linear interpolation between the two nearest predicted levels
            hi = int(torch.searchsorted(grid, torch.tensor(v, dtype=q.dtype, device=q.device)).clamp(1, len(own) - 1))
            lo = hi - 1
            w = (v - own[lo]) / (own[hi] - own[lo])
            cols.append(q[..., lo] * (1 - w) + q[..., hi] * w)
        return torch.stack(cols, dim=-1), levels

    def _finish(self, pred: Tensor, horizon: int, loc: Tensor, scale: Tensor, levels, batch: ContextBatch | None):
        q = pred[:, :horizon].sort(dim=-1).values.double()
        q = q * scale.to(q.device)[:, :, None] + loc.to(q.device)[:, :, None]
        q, levels = self._select_levels(q.float(), levels)
        index = batch.future_index(horizon) if batch is not None else None
        return ForecastOutput(q, levels, index=index, columns=None if batch is None else batch.columns)

    @staticmethod
    def _check_horizon(horizon: Any) -> int:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"forecast: horizon must be an integer >= 1, got {horizon!r}")
        return horizon

    @torch.no_grad()
    def forecast(self, context: Any, horizon: int, quantiles: Sequence[float] | None = None, *,
                 rollout: str | None = None) -> ForecastOutput:
        """Quantile forecasts for the next `horizon` steps of each series.

        context: a tensor/array (T,) or (B, T), a list of 1-D arrays (any lengths), a pandas Series/DataFrame
        (columns = series), or a ForecastStream (`stream` / `update`): nothing is re-read then. NaN = missing.
        quantiles: levels to return (default the model's nine); levels between the predicted ones are
        linearly interpolated. rollout: override config.rollout ("mask" or "median")."""
        horizon = self._check_horizon(horizon)
        rollout = rollout or self.config.rollout
        if rollout not in ("mask", "median"):
            raise ValueError(f"forecast: rollout must be 'mask' or 'median', got {rollout!r}")
        if isinstance(context, ForecastStream):
            return self._forecast_stream(context, horizon, quantiles, rollout)
        batch = to_context_batch(context)
        values = batch.values
        if self.config.max_context and values.shape[1] > self.config.max_context:
            values = values[:, -self.config.max_context:]
        loc, scale = instance_scale(values)
        pred = self._forecast_normalized((values - loc) / scale, horizon, rollout)
        return self._finish(pred, horizon, loc, scale, quantiles, batch)

    def _forecast_normalized(self, x: Tensor, horizon: int, rollout: str, pad_left: int | None = None) -> Tensor:
        """Normalised (B, T) -> predictions (B, >= horizon, Q). The patch grid: `pad_left` masked steps first
        (default: so the last patch ends at the last step); a last partial patch of k steps is completed by
        the previous token's prediction of its remaining steps."""
        P = self.config.patch_size
        T = x.shape[1]
        pad_left = (-T) % P if pad_left is None else pad_left
        k = (pad_left + T) % P
        vals, mask = self._patches(x, pad_left, (-(pad_left + T)) % P)
        if k and vals.shape[1] < 2:  # the partial patch needs a token before it: an all-missing one
            vals, mask = F.pad(vals, (0, 0, 1, 0)), F.pad(mask, (0, 0, 1, 0))
        out, state = self(vals, mask)
        first = out[:, -1] if not k else torch.cat([out[:, -2, k:], out[:, -1]], dim=1)
        return self._roll(state, first, horizon, rollout)

    # ----------------------------------------------------------------- streaming
    @torch.no_grad()
    def stream(self, context: Any) -> ForecastStream:
        """Read a context once (any form `forecast` takes; its scaling is fixed from here on) and return a
        stream to `update` with new observations and to `forecast` from. max_context does not apply."""
        batch = to_context_batch(context)
        loc, scale = instance_scale(batch.values)
        x = (batch.values - loc) / scale
        pad_left = (-x.shape[1]) % self.config.patch_size
        vals, mask = self._patches(x, pad_left)
        out, state = self(vals, mask)
        return ForecastStream(state, out[:, -1], x[:, :0], loc, scale, pad_left, x.shape[1])

    @torch.no_grad()
    def update(self, stream: ForecastStream, values: Any) -> ForecastStream:
        """The stream after new observations `values` (B, n) (a tensor/array; NaN = missing; n >= 0)."""
        if not isinstance(stream, ForecastStream):
            raise TypeError(f"update: stream must be a ForecastStream (from stream()), got {type(stream).__name__}")
        new = torch.as_tensor(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=torch.float64)
        B = stream.loc.shape[0]
        if new.dim() == 1 and B == 1:
            new = new[None]
        if new.dim() != 2 or new.shape[0] != B:
            raise ValueError(f"update: values must have shape ({B}, n) (one row per series of the stream), got "
                             f"{tuple(new.shape)}")
        if torch.isinf(new).any():
            raise ValueError("update: values hold +-inf; use NaN for missing values")
        x = torch.cat([stream.pending, (new - stream.loc) / stream.scale], dim=1)
        P = self.config.patch_size
        full = x.shape[1] // P * P
        state, next_patch = stream.state, stream.next_patch
        if full:
            vals, mask = self._patches(x[:, :full], 0)
            out, state = self(vals, mask, state)
            next_patch = out[:, -1]
        return replace(stream, state=state, next_patch=next_patch, pending=x[:, full:],
                       length=stream.length + new.shape[1])

    def _forecast_stream(self, stream: ForecastStream, horizon: int, levels, rollout: str) -> ForecastOutput:
        k = stream.pending.shape[1]
        if k == 0:
            pred = self._roll(stream.state, stream.next_patch, horizon, rollout)
        else:
            vals, mask = self._patches(stream.pending, 0, self.config.patch_size - k)
            out, state = self(vals, mask, stream.state)
            pred = self._roll(state, torch.cat([stream.next_patch[:, k:], out[:, -1]], dim=1), horizon, rollout)
        return self._finish(pred, horizon, stream.loc, stream.scale, levels, None)

    # ----------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        max_shard_bytes: int | None = None) -> Path:
        """config.json + model.safetensors (or shards model-0000i-of-0000n.safetensors with an index when the
        weights exceed max_shard_bytes), written atomically. dtype: store the weights in this dtype (bfloat16
        halves the files)."""
        from safetensors.torch import save_file

        weights = {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
                   for k, v in self.state_dict().items()}
        shards: list[dict[str, Tensor]] = [{}]
        size = 0
        for k, v in weights.items():
            nbytes = v.numel() * v.element_size()
            if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        with atomic_directory(path) as tmp:
            write_json_atomic(tmp / CONFIG_NAME, {"model_type": MODEL_TYPE, **self.config.to_dict()}, sort_keys=True)
            if len(shards) == 1:
                save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            else:
                n, weight_map = len(shards), {}
                for i, shard in enumerate(shards):
                    name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                    save_file(shard, str(tmp / name), metadata={"format": "pt"})
                    weight_map.update({k: name for k in shard})
                write_json_atomic(tmp / INDEX_NAME, {"weight_map": weight_map}, sort_keys=True)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = torch.float32, device=None,
                        **overrides) -> "xLSTMForecaster":
        """Load a directory `save_pretrained` wrote, in eval mode. dtype: the parameters' dtype (default float32,
        whatever was stored); overrides: config fields to change (backend=..., rollout=..., max_context=...)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = checked_directory(path, f"{cls.__name__}.from_pretrained")
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no {CONFIG_NAME} in {path}")
        raw = read_json_object(path / CONFIG_NAME, f"{cls.__name__}.from_pretrained")
        if raw.pop("model_type", None) != MODEL_TYPE:
            raise ValueError(f"{cls.__name__}.from_pretrained: {path / CONFIG_NAME} is not a forecaster checkpoint "
                             f"(model_type must be {MODEL_TYPE!r})")
        try:
            config = ForecastConfig.from_dict({**raw, **overrides})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cls.__name__}.from_pretrained: inconsistent config in {path / CONFIG_NAME}: {e}") from None
        if (path / INDEX_NAME).is_file():
            files = sorted(set(read_json_object(path / INDEX_NAME, cls.__name__)["weight_map"].values()))
        else:
            files = [WEIGHTS_NAME]
        items = {}
        for name in files:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{cls.__name__}.from_pretrained: checkpoint has no {name}: {path}")
            try:
                items.update(load_file(str(path / name)))
            except (SafetensorError, OSError, ValueError) as e:
                raise ValueError(f"{cls.__name__}.from_pretrained: corrupt {name} ({e}): {path}") from None
        model = cls(config)
        load_strict(model.state_dict(keep_vars=True), items.items(), str(path))
        return model.to(device=device, dtype=dtype).eval()
