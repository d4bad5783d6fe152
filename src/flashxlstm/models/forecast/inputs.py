"""What `forecast` accepts as context, turned into one (B, T) float64 tensor with NaN for missing steps.

    a tensor or numpy array (T,) or (B, T)         one or B series of equal length (NaN: missing)
    a list of 1-D arrays / tensors / lists        series of different lengths, left-padded with NaN
    a pandas Series or DataFrame                  one series, or one per column (index: time)

Padding is the mask: a padded or missing step reaches the model as value 0 with mask 0, exactly like a NaN
in the data. `ContextBatch.future_index(horizon)` continues a pandas input's index over the horizon.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class ContextBatch:
    values: Tensor                   # (B, T) float64, NaN where missing or padded
    columns: list | None = None      # pandas input: the series' names
    index: Any = None                # pandas input: the time index of the context

    def future_index(self, horizon: int):
        """The horizon's time index for pandas input (None otherwise): dates continue at the index's frequency,
        a RangeIndex continues its step, any other index continues as integer positions after the context."""
        if self.index is None:
            return None
        import pandas as pd

        idx = self.index
        if isinstance(idx, pd.DatetimeIndex):
            freq = idx.freq or (pd.infer_freq(idx) if len(idx) >= 3 else None)
            if freq is not None:
                return pd.date_range(idx[-1], periods=horizon + 1, freq=freq)[1:]
        if isinstance(idx, pd.PeriodIndex):
            return pd.period_range(idx[-1] + 1, periods=horizon, freq=idx.freq)
        if isinstance(idx, pd.RangeIndex):
            step = idx.step
            return pd.RangeIndex(idx[-1] + step, idx[-1] + step * (horizon + 1), step) if len(idx) else \
                pd.RangeIndex(horizon)
        return pd.RangeIndex(len(idx), len(idx) + horizon)


def _as_1d(x: Any, i: int) -> Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64))
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"forecast: series {i} of the context list must be a non-empty 1-D array, got shape "
                         f"{tuple(t.shape)}")
    return t


def _is_pandas(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("pandas") and type(x).__name__ in ("Series", "DataFrame")


def to_context_batch(context: Any) -> ContextBatch:
    """Any accepted context (see the module doc) -> ContextBatch; a clear error for anything else."""
    if _is_pandas(context):
        frame = context.to_frame() if type(context).__name__ == "Series" else context
        try:
            values = torch.as_tensor(frame.to_numpy(dtype=np.float64, na_value=np.nan).T.copy())
        except (TypeError, ValueError) as e:
            raise ValueError(f"forecast: the pandas context must hold numbers in every column ({e})") from None
        if values.shape[1] == 0:
            raise ValueError("forecast: the pandas context is empty (no rows)")
        return ContextBatch(values, columns=list(frame.columns), index=frame.index)
    if isinstance(context, (list, tuple)):
        if not context:
            raise ValueError("forecast: the context list is empty; give at least one series")
        if all(np.isscalar(v) for v in context):
            context = [context]
        series = [_as_1d(s, i) for i, s in enumerate(context)]
        T = max(len(s) for s in series)
        values = torch.full((len(series), T), float("nan"), dtype=torch.float64)
        for i, s in enumerate(series):
            values[i, T - len(s):] = s
        return ContextBatch(values)
    if isinstance(context, (Tensor, np.ndarray)):
        t = context.detach().cpu().to(torch.float64) if isinstance(context, Tensor) else \
            torch.as_tensor(np.asarray(context, dtype=np.float64))
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"forecast: a tensor context must have shape (T,) or (B, T) with B, T >= 1, got "
                             f"{tuple(t.shape)}")
        return ContextBatch(t.clone())
    raise TypeError(f"forecast: context must be a tensor/array (B, T), a list of 1-D arrays or a pandas "
                    f"Series/DataFrame, got {type(context).__name__}")


def instance_scale(values: Tensor) -> tuple[Tensor, Tensor]:
    """loc, scale (B, 1) float64: mean and standard deviation of each row's observed (finite) values. A row with
    (almost) no spread gets scale max(1e-3 |loc|, 1e-8) so it normalises to ~0 without dividing by zero."""
    finite = torch.isfinite(values)
    if torch.isinf(values).any():
        raise ValueError("forecast: the context holds +-inf; use NaN for missing values")
    count = finite.sum(1, keepdim=True)
    empty = (count == 0).squeeze(1)
    if empty.any():
        rows = empty.nonzero().squeeze(1)[:5].tolist()
        raise ValueError(f"forecast: series {rows} have no observed value (all NaN); each needs at least one")
    x = torch.where(finite, values, torch.zeros_like(values))
    loc = x.sum(1, keepdim=True) / count
    var = (torch.where(finite, values - loc, torch.zeros_like(values)) ** 2).sum(1, keepdim=True) / count
    floor = torch.clamp(1e-3 * loc.abs(), min=1e-8)
    return loc, torch.maximum(var.sqrt(), floor)
