"""A PatchTST-style Transformer baseline (Nie et al., 2023, arXiv 2211.14730), trained per dataset in the
forecast harness and giving quantile forecasts.

Channel independent (each series alone), instance normalisation of the context (mean and standard deviation
of its observed values, undone on the output), the context cut into overlapping patches (length P, stride
P / 2) embedded linearly with a learnable position embedding, a Transformer encoder (pre-norm LayerNorm where
the paper uses BatchNorm), and a flatten head to horizon x quantiles trained with the pinball loss. Contexts
shorter than the model's length are left-padded and the padding is marked by a mask channel in each patch.

Training sees only the data before the dataset's earliest evaluation origin (each series cut there), so no
evaluation target leaks into the weights; windows of context + horizon are sampled at random ends. Training
stops at `steps` or after `time_budget_s` seconds, whichever comes first.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class PatchTSTConfig:
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    max_patch: int = 16  # patch length = min(max_patch, context_length // 8), at least 2
    context_factor: int = 8  # context length = max(context_factor * horizon, 3 * season), capped by max_context
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    time_budget_s: float | None = 30.0
    seed: int = 0


class PatchTST(nn.Module):
    def __init__(self, context_length: int, horizon: int, num_quantiles: int, patch: int, cfg: PatchTSTConfig):
        super().__init__()
        self.context_length, self.horizon, self.num_quantiles = context_length, horizon, num_quantiles
        self.patch, self.stride = patch, max(patch // 2, 1)
        self.num_patches = (context_length - patch) // self.stride + 1
        self.embed = nn.Linear(2 * patch, cfg.dim)
        self.position = nn.Parameter(0.02 * torch.randn(self.num_patches, cfg.dim))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, 2 * cfg.dim, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(self.num_patches * cfg.dim, horizon * num_quantiles)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x, mask (B, L) normalised values (0 where padded) and 1/0 observed -> (B, horizon, Q) normalised."""
        patches = torch.cat([x.unfold(1, self.patch, self.stride), mask.unfold(1, self.patch, self.stride)], -1)
        h = self.encoder(self.embed(patches) + self.position)
        return self.head(self.norm(h).flatten(1)).view(-1, self.horizon, self.num_quantiles)


def _normalise(contexts: list[np.ndarray], length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Left-pad / cut to `length`; z-score each by its observed values -> values, mask, mean, scale."""
    B = len(contexts)
    x = np.zeros((B, length))
    m = np.zeros((B, length))
    mean, scale = np.zeros(B), np.ones(B)
    for i, c in enumerate(contexts):
        c = np.asarray(c, dtype=np.float64)[-length:]
        obs = ~np.isnan(c)
        if obs.any():
            mean[i] = c[obs].mean()
            sd = c[obs].std()
            scale[i] = sd if sd > 1e-8 * (abs(mean[i]) + 1.0) else abs(mean[i]) + 1.0
        x[i, length - c.size:] = np.where(obs, (c - mean[i]) / scale[i], 0.0)
        m[i, length - c.size:] = obs
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return as_t(x), as_t(m), as_t(mean), as_t(scale)


def _pinball(pred: Tensor, y: Tensor, q: Tensor) -> Tensor:
    diff = y[..., None] - pred
    return torch.maximum(q * diff, (q - 1) * diff).mean()


def fit_patchtst(train_series: list[np.ndarray], horizon: int, season: int, quantiles, max_context: int,
                 cfg: PatchTSTConfig, log=None) -> tuple[PatchTST, dict]:
    """Train one model on windows of `train_series` (each already cut before the first evaluation origin)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    series = [np.asarray(s, dtype=np.float64) for s in train_series if len(s) >= horizon + 2]
    if not series:
        raise ValueError(f"PatchTST: no training series has the {horizon + 2} points one window needs "
                         f"(lengths {[len(s) for s in train_series]})")
    length = max(cfg.context_factor * horizon, 3 * season)
    length = min(length, max_context) if max_context else length
    patch = max(2, min(cfg.max_patch, length // 8))
    length = max(length, 2 * patch)
    model = PatchTST(length, horizon, len(quantiles), patch, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    q = torch.tensor(quantiles, dtype=torch.float32)
    weights = np.array([len(s) - horizon - 1 for s in series], dtype=np.float64)
    weights /= weights.sum()
    t0, step, loss_value = time.perf_counter(), 0, math.nan
    model.train()
    while step < cfg.steps:
        if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
            break
        ctxs, targets = [], []
        for k in rng.choice(len(series), size=cfg.batch_size, p=weights):
            s = series[k]
            end = int(rng.integers(horizon + 2, len(s) + 1))  # the target is s[end - horizon: end]
            ctxs.append(s[max(0, end - horizon - length): end - horizon])
            targets.append(s[end - horizon: end])
        x, m, mean, scale = _normalise(ctxs, length)
        y = (torch.as_tensor(np.stack(targets), dtype=torch.float32) - mean[:, None]) / scale[:, None]
        loss = _pinball(model(x, m), y, q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step, loss_value = step + 1, loss.item()
    info = {"steps": step, "train_seconds": time.perf_counter() - t0, "final_loss": loss_value,
            "context_length": length, "patch": patch,
            "parameters": sum(p.numel() for p in model.parameters())}
    if log:
        log(f"  patchtst: {step} steps in {info['train_seconds']:.1f} s, loss {loss_value:.4f}, "
            f"context {length}, patch {patch}")
    return model.eval(), info


@torch.no_grad()
def predict_patchtst(model: PatchTST, contexts: list[np.ndarray]) -> np.ndarray:
    """(N, horizon, Q) quantile forecasts in the data's units, sorted along Q."""
    x, m, mean, scale = _normalise(contexts, model.context_length)
    out = model(x, m) * scale[:, None, None] + mean[:, None, None]
    return np.sort(out.double().numpy(), axis=-1)
