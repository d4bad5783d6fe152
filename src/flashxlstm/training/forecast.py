"""Pretraining the forecaster (flashxlstm.models.forecast) on synthetic and real series, time-boxed.

    from flashxlstm.training.forecast import PretrainConfig, pretrain
    result = pretrain(PretrainConfig(time_budget_s=120), out="runs/forecaster")  # OUT/checkpoint, OUT/loss_log.jsonl

Data: `synthetic_series` (KernelSynth + structural generators, data/series_synth.py), generated once from the
seed, and the real series of `flashxlstm.data.series.PRETRAIN` (never a HELD_OUT one: `pretrain_real_series`
refuses those), read from the installed packages or from an .npz that `save_pretrain_npz` wrote. Each step
draws `batch_size` windows of `context_length + prediction_length` steps (all from real series with
probability `real_fraction`, else all synthetic; real stretches shorter than a window are left-padded with
missing steps, see WindowSampler), scales each by the mean and standard
deviation of its context part, and trains every patch token to predict the next patch's quantiles with the
pinball (quantile) loss over the observed target steps.

Augmentations, applied to the input only (the targets stay the clean series): contiguous patch masking
(TiRex's CPM: a run of 1..`cpm_max_patches` whole patches becomes missing, so the model learns to forecast
through missing patches, which is how multi-patch horizons roll out), random missing spans, sign flips (flip_prob).

Schedule: AdamW, linear warm-up, cosine decay over the steps or the time box (PretrainConfig.progress);
bf16 autocast on CUDA; gradient clipping. Validation: the loss on a fixed set of windows from series of another
seed, before and after training and every `eval_every` steps.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.series_synth import synthetic_series
from ..models.forecast import ForecastConfig, xLSTMForecaster
from .engine import autocast as amp_context, optimizer_step, resolve_device
from .schedule import run_progress, warmup_cosine_at
from .settings import LoopSettings


@dataclass
class PretrainConfig(LoopSettings):
    """The shared loop settings (`training.settings.LoopSettings`: steps, lr, warm-up, AdamW decay and betas,
    clipping, evaluation cadence, seed, device) plus the forecaster's data, augmentations and model.

    Run length: `steps` is the step cap, as in every LoopSettings run; `time_budget_s` (None: no limit) is an
    optional time box of the training loop (data generation not included). The run ends at whichever comes
    first, and the cosine schedule follows the one nearer its end (progress = max(step / steps, elapsed /
    time_budget_s)), so a step-counted run is exactly reproducible and a time-boxed one still decays to
    min_lr_factor * lr when its time is up."""

    steps: int = 1_000_000
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    eval_every: int = 100
    time_budget_s: float | None = 60.0
    min_lr_factor: float = 0.1
    batch_size: int = 64
    context_length: int = 512
    prediction_length: int = 64
    synthetic_count: int = 1024        # synthetic series in the pool
    synthetic_length: int = 1024
    kernel_synth_fraction: float = 0.5
    generator_weights: dict | None = None   # synthetic_series' weights of the structural generators (None: equal)
    short_fraction: float = 0.0        # probability that a synthetic batch is a short left-padded stretch, as real ones
    real_fraction: float = 0.3         # probability that a window comes from a PRETRAIN real series
    real_weighting: str = "dataset"    # "dataset": each real dataset equally likely, then a series; "series"
    cpm_prob: float = 0.5              # probability of a contiguous masked run of patches in a window
    cpm_max_patches: int = 4
    missing_prob: float = 0.1          # probability of a random missing span in a window
    flip_prob: float = 0.5             # probability of a sign flip of a window
    eval_windows: int = 128
    log_every: int = 10
    amp: str = "auto"                  # "auto": bf16 autocast on CUDA, none elsewhere; "bf16"; "none"
    model: ForecastConfig = field(default_factory=ForecastConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ForecastConfig.from_dict(self.model)
        self.check()

    def check(self) -> None:
        super().check()
        self.check_positive_ints("batch_size", "context_length", "prediction_length", "synthetic_count",
                                 "synthetic_length", "eval_windows", "log_every", "cpm_max_patches")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds or None (no time box), got {self.time_budget_s}")
        if self.generator_weights is not None:
            from ..data.series_synth import GENERATORS
            self.generator_weights = {str(k): float(v) for k, v in dict(self.generator_weights).items()}
            unknown = sorted(set(self.generator_weights) - set(GENERATORS))
            if unknown or any(not v >= 0 for v in self.generator_weights.values()) \
                    or not sum(self.generator_weights.values()) > 0:
                raise ValueError(f"generator_weights must map names of {sorted(GENERATORS)} to weights >= 0 with a "
                                 f"positive sum, got {self.generator_weights}")
        if self.real_weighting not in ("dataset", "series"):
            raise ValueError(f"real_weighting must be 'dataset' or 'series', got {self.real_weighting!r}")
        if self.amp not in ("auto", "bf16", "none"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'none', got {self.amp!r}")
        if not 0 <= self.min_lr_factor <= 1:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        for name in ("kernel_synth_fraction", "short_fraction", "real_fraction", "cpm_prob", "missing_prob",
                     "flip_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.model, ForecastConfig):
            raise ValueError(f"model must be a ForecastConfig or its dict, got {type(self.model).__name__}")
        P = self.model.patch_size
        if self.context_length % P or self.prediction_length % P or self.context_length < P:
            raise ValueError(f"context_length ({self.context_length}) and prediction_length "
                             f"({self.prediction_length}) must be multiples of the patch size {P}")

    def progress(self, step: int, elapsed: float) -> float:
        """How far the run is, in [0, 1+): the larger of the step and the time fraction (the run ends at 1)."""
        return run_progress(step, elapsed, steps=self.steps, time_budget_s=self.time_budget_s)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["model"] = self.model.to_dict()
        return d


@dataclass
class PretrainResult:
    model: xLSTMForecaster
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    eval_before: float
    eval_after: float
    log: list[dict]


# ----------------------------------------------------------------------------------------------- real series
def pretrain_real_series(names=None, npz: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """The real pretraining series: {dataset name: [1-D arrays]} for `names` (default every PRETRAIN name),
    read from an .npz of `save_pretrain_npz` when given, else from the installed packages. A HELD_OUT name
    (or any name outside PRETRAIN) is an error: held-out series never reach pretraining."""
    from ..data.series import HELD_OUT, PRETRAIN, load_series

    names = tuple(PRETRAIN if names is None else names)
    bad = [n for n in names if n in HELD_OUT or n not in PRETRAIN]
    if bad:
        raise ValueError(f"pretrain_real_series: {bad} are not pretraining datasets (held out from pretraining, "
                         f"or unknown); allowed: flashxlstm.data.series.PRETRAIN")
    if npz is None:
        return {n: [np.asarray(s, dtype=np.float64) for s in load_series(n)] for n in names}
    out: dict[str, list[np.ndarray]] = {}
    with np.load(npz) as f:
        stored = sorted(f.files)
        for key in stored:
            name = key.rsplit("/", 1)[0]
            if name in HELD_OUT or name not in PRETRAIN:
                raise ValueError(f"pretrain_real_series: {npz} holds {name!r}, which is not a pretraining dataset")
            if name in names:
                out.setdefault(name, []).append(np.asarray(f[key], dtype=np.float64))
    missing = [n for n in names if n not in out]
    if missing and npz is not None and names != tuple(PRETRAIN):
        raise ValueError(f"pretrain_real_series: {npz} lacks {missing}")
    return out


def save_pretrain_npz(path: str | Path, names=None) -> dict[str, int]:
    """Write the PRETRAIN series into one .npz (keys 'name/i') for machines without the data packages;
    returns {name: number of series}."""
    data = pretrain_real_series(names)
    arrays = {f"{n}/{i}": s for n, series in data.items() for i, s in enumerate(series)}
    np.savez_compressed(path, **arrays)
    return {n: len(s) for n, s in data.items()}


# ----------------------------------------------------------------------------------------------- windows
class WindowSampler:
    """Seeded windows (B, W) of the pool's series with their context scaling, input mask and augmentations.

    A batch is all synthetic (full windows) or, with probability real_fraction, all real: one size r (patches)
    is drawn for the batch and every row is a random stretch of r patches of a real series, left-padded with
    missing steps (r = W / P: full windows). Every row of a batch then starts at the same patch, so the
    model's skipping of leading missing patches runs the batch as one group (one sLSTM pass, not one per
    padding), and the augmentations never mask a row's first observed patch.

    real: a list of series, or {dataset: [series]}; with cfg.real_weighting "dataset" a real row draws a
    dataset first (uniformly, among those with a series long enough), then one of its series, so a dataset of
    200 short series weighs as much as one long series; "series" draws every series equally."""

    SIZES = (2, 4, 8, 16, 32)

    def __init__(self, synthetic: list[np.ndarray], real, cfg: PretrainConfig, seed: int):
        self.cfg, self.rng = cfg, np.random.default_rng(seed)
        P = cfg.model.patch_size
        self.W = cfg.context_length + cfg.prediction_length
        self.N = self.W // P
        min_len = 2 * P
        self.synthetic = [s for s in synthetic if len(s) >= self.W] or [s for s in synthetic if len(s) >= min_len]
        groups = list(real.values()) if isinstance(real, dict) else [[s] for s in real]
        if cfg.real_weighting == "series":
            groups = [[s] for g in groups for s in g]
        groups = [[s for s in g if np.isfinite(s).sum() >= min_len] for g in groups]
        sizes = sorted({r for r in self.SIZES if r < self.N} | {self.N})
        by_size = {r: [[s for s in g if len(s) >= r * P] for g in groups] for r in sizes}
        self.real_by_size = {r: [g for g in v if g] for r, v in by_size.items()}
        self.real_by_size = {r: v for r, v in self.real_by_size.items() if v}
        self.short_sizes = [r for r in sizes if r < self.N] or [self.N]
        if not self.synthetic and not self.real_by_size:
            raise ValueError(f"pretrain: no series of at least {min_len} steps to draw windows from")

    def _window(self, s: np.ndarray, r: int) -> tuple[np.ndarray, int]:
        """A stretch of min(r * P, W) steps of s at a random start, left-padded to W; where its context ends."""
        cfg, rng, W = self.cfg, self.rng, self.W
        n = min(r * cfg.model.patch_size, W, len(s))
        start = int(rng.integers(len(s) - n + 1))
        out = np.full(W, np.nan)
        out[W - n:] = s[start:start + n]
        return out, (cfg.context_length if n == W else W - min(cfg.prediction_length, n // 2))

    def sample(self, batch_size: int, augment: bool = True):
        """values (B, W) normalised, input (B, W) with the augmentations' missing steps (NaN), both float32."""
        cfg, rng, P, W = self.cfg, self.rng, self.cfg.model.patch_size, self.W
        use_real = self.real_by_size and (not self.synthetic or rng.random() < cfg.real_fraction)
        if use_real:
            r = list(self.real_by_size)[int(rng.integers(len(self.real_by_size)))]
            pool = self.real_by_size[r]
        elif cfg.short_fraction > 0 and rng.random() < cfg.short_fraction:
            r, pool = self.short_sizes[int(rng.integers(len(self.short_sizes)))], self.synthetic
        else:
            r, pool = self.N, self.synthetic
        rows, inputs = [], []
        for _ in range(batch_size):
            series = pool[int(rng.integers(len(pool)))]
            if use_real:  # a group (dataset) was drawn: now one of its series
                series = series[int(rng.integers(len(series)))]
            w, ctx_end = self._window(series, r)
            ctx = w[:ctx_end][np.isfinite(w[:ctx_end])]
            if ctx.size < 2:
                ctx = w[np.isfinite(w)]
            loc, scale = ctx.mean(), ctx.std()
            scale = max(scale, 1e-3 * abs(loc), 1e-8)
            z = np.clip((w - loc) / scale, -1e3, 1e3)
            if augment and cfg.flip_prob and rng.random() < cfg.flip_prob:
                z = -z
            x = z.copy()
            lead = int(np.argmax(np.isfinite(w))) // P + 1   # the first patch after the first observed one
            if augment and rng.random() < cfg.cpm_prob and lead < self.N:
                first = int(rng.integers(lead, self.N))
                run = min(int(rng.integers(1, cfg.cpm_max_patches + 1)), self.N - first)
                x[first * P:(first + run) * P] = np.nan
            if augment and rng.random() < cfg.missing_prob and lead * P < W - 1:
                span = int(rng.integers(1, 2 * P))
                start = int(rng.integers(lead * P, W - 1))
                x[start:start + span] = np.nan
            rows.append(z)
            inputs.append(x)
        return torch.as_tensor(np.stack(rows), dtype=torch.float32), torch.as_tensor(np.stack(inputs), dtype=torch.float32)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """Mean quantile (pinball) loss of pred (..., Q) against target (...), over the finite targets only."""
    ok = torch.isfinite(target)
    y = torch.where(ok, target, torch.zeros_like(target))[..., None]
    q = torch.tensor(levels, dtype=pred.dtype, device=pred.device)
    diff = y - pred
    loss = torch.maximum(q * diff, (q - 1) * diff).mean(-1)
    return (loss * ok).sum() / ok.sum().clamp(min=1)


def window_loss(model: xLSTMForecaster, values: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Every patch token predicts the next patch: the pinball loss over windows (B, W) (normalised)."""
    B, W = values.shape
    P = model.config.patch_size
    mask = torch.isfinite(inputs)
    x = torch.where(mask, inputs, torch.zeros_like(inputs)).view(B, W // P, P)
    mask = mask.view(B, W // P, P)
    out, _ = model(x, mask.to(x.dtype))
    # a token before the window's first observation is skipped by the model (it predicts nothing)
    started = mask.any(-1).cummax(dim=1).values[:, :-1, None]
    target = values.view(B, W // P, P)[:, 1:]
    target = torch.where(started, target, torch.full_like(target, float("nan")))
    return pinball_loss(out[:, :-1], target, model.config.quantiles)


POOL_PIECE = 256


def synthetic_pool(cfg: PretrainConfig, device=None, deadline: float | None = None) -> list[np.ndarray]:
    """cfg.synthetic_count series in pieces of POOL_PIECE, piece i from seed (cfg.seed, i); stops early at
    `deadline` (time.perf_counter()), so a time-boxed run never spends its budget generating data."""
    pool: list[np.ndarray] = []
    piece = 0
    while len(pool) < cfg.synthetic_count:
        n = min(POOL_PIECE, cfg.synthetic_count - len(pool))
        seed = int(np.random.SeedSequence([cfg.seed, piece]).generate_state(1)[0])
        pool += synthetic_series(n, cfg.synthetic_length, seed=seed, kernel_synth_fraction=cfg.kernel_synth_fraction,
                                 generator_weights=cfg.generator_weights, device=device)
        piece += 1
        if deadline is not None and time.perf_counter() > deadline:
            break
    return pool


def set_backend(model: xLSTMForecaster, backend: str) -> None:
    """Switch every sLSTM layer (and the config that is saved) to another op backend."""
    model.config.backend = backend
    for block in model.blocks:
        block.layer.backend = backend


def pretrain(cfg: PretrainConfig, out: str | Path | None = None, *, real_series: dict | None = None,
             model: xLSTMForecaster | None = None, save_dtype: torch.dtype | None = None,
             max_shard_bytes: int | None = None, deadline: float | None = None, data_deadline: float | None = None,
             print_fn=print) -> PretrainResult:
    """Pretrain (a new model from cfg.model, or `model`) for cfg.steps or cfg.time_budget_s, whichever ends
    first; write OUT/checkpoint (save_pretrained), OUT/loss_log.jsonl and OUT/pretrain.json when `out` is given.
    real_series: {name: arrays} (default: none; pass `pretrain_real_series()` for the PRETRAIN set).
    deadline: a time.perf_counter() value the training loop never runs past, whatever cfg.time_budget_s says (a
    hard time box for the whole job: data generation comes out of it). data_deadline: a time.perf_counter()
    value after which the synthetic pool stops growing (it is generated in seeded pieces of POOL_PIECE series; at
    least one piece is always made)."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = (model or xLSTMForecaster(cfg.model)).to(device).train()
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    gen_device = device if device.type == "cuda" else None
    eval_pool = synthetic_series(max(16, cfg.eval_windows // 4), cfg.synthetic_length, seed=cfg.seed + 10_000,
                                 kernel_synth_fraction=cfg.kernel_synth_fraction,
                                 generator_weights=cfg.generator_weights, device=gen_device)
    synthetic = synthetic_pool(cfg, gen_device, data_deadline)
    real = [s for series in (real_series or {}).values() for s in series]
    sampler = WindowSampler(synthetic, dict(real_series or {}), cfg, seed=cfg.seed + 1)
    eval_values, eval_inputs = WindowSampler(eval_pool, [], cfg, seed=cfg.seed + 2).sample(cfg.eval_windows,
                                                                                            augment=False)
    eval_values, eval_inputs = eval_values.to(device), eval_inputs.to(device)
    data_seconds = time.perf_counter() - t_start

    def autocast():
        return amp_context(device, "bf16" if use_bf16 else "none")

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        with autocast():
            loss = float(window_loss(model, eval_values, eval_inputs))
        model.train()
        return loss

    opt = cfg.optimizer(model)
    eval_before = evaluate()
    log: list[dict] = [{"step": 0, "seconds": 0.0, "eval_loss": eval_before}]
    print_fn(f"forecaster: {model.num_parameters() / 1e6:.2f}M parameters on {device} "
             f"({'bf16 autocast' if use_bf16 else 'float32'}); data {len(synthetic)} synthetic + {len(real)} real "
             f"series in {data_seconds:.1f} s; eval loss {eval_before:.4f}")
    t0 = time.perf_counter()
    run_cfg = cfg
    if deadline is not None:  # the hard deadline shortens the time box (the schedule decays in time)
        left = deadline - t0
        if left <= 0:
            run_cfg = None
        elif cfg.time_budget_s is None or left < cfg.time_budget_s:
            run_cfg = replace(cfg, time_budget_s=left)
    step, first_loss, last_loss, running, fallback = 0, float("nan"), float("nan"), [], None
    while run_cfg is not None:
        progress = run_cfg.progress(step, time.perf_counter() - t0)
        if progress >= 1.0:
            break
        lr = warmup_cosine_at(step, progress, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                              min_lr=cfg.min_lr_factor * cfg.lr)
        values, inputs = sampler.sample(cfg.batch_size)
        values, inputs = values.to(device, non_blocking=True), inputs.to(device, non_blocking=True)

        def batch_loss(_micro: int) -> torch.Tensor:
            with autocast():
                return window_loss(model, values, inputs)

        # check_finite=False: no host synchronisation per step; the logged means show a diverging run
        try:
            loss, _ = optimizer_step(model, opt, batch_loss, lr=lr, grad_clip=cfg.grad_clip, check_finite=False)
        except Exception as e:  # noqa: BLE001 - only the first step, only "auto" on CUDA, and reported
            if step or device.type != "cuda" or model.config.backend != "auto":
                raise
            fallback = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print_fn(f"forecaster: the sLSTM 'auto' backend failed on the first step ({fallback}); "
                     f"continuing with backend 'fused' (recorded in pretrain.json)")
            set_backend(model, "fused")
            loss, _ = optimizer_step(model, opt, batch_loss, lr=lr, grad_clip=cfg.grad_clip, check_finite=False)
        step += 1
        running.append(loss.detach())
        if step % cfg.log_every == 0 or step == 1:
            mean = float(torch.stack(running).mean())
            running = []
            first_loss = mean if step == 1 else first_loss
            last_loss = mean
            entry = {"step": step, "seconds": round(time.perf_counter() - t0, 2), "loss": round(mean, 5),
                     "lr": lr}
            if cfg.eval_every and step % cfg.eval_every == 0:
                entry["eval_loss"] = round(evaluate(), 5)
            log.append(entry)
            print_fn(json.dumps(entry))
    if running:
        last_loss = float(torch.stack(running).mean())
    train_seconds = time.perf_counter() - t0
    eval_after = evaluate()
    log.append({"step": step, "seconds": round(train_seconds, 2), "eval_loss": eval_after})
    model.eval()
    result = PretrainResult(model, step, train_seconds, first_loss, last_loss, eval_before, eval_after, log)
    print_fn(f"forecaster: {step} steps in {train_seconds:.1f} s; train loss {first_loss:.4f} -> {last_loss:.4f}; "
             f"eval loss {eval_before:.4f} -> {eval_after:.4f}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / "checkpoint", dtype=save_dtype, max_shard_bytes=max_shard_bytes)
        with open(out / "loss_log.jsonl", "w") as f:
            for entry in log:
                f.write(json.dumps(entry) + "\n")
        summary = {"config": cfg.to_dict(), "parameters": model.num_parameters(), "device": str(device),
                   "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "torch": torch.__version__, "steps": step, "train_seconds": round(train_seconds, 2),
                   "data_seconds": round(data_seconds, 2), "first_loss": first_loss, "last_loss": last_loss,
                   "eval_loss_before": eval_before, "eval_loss_after": eval_after,
                   "real_datasets": sorted(real_series or {}), "real_series": len(real),
                   "synthetic_series": len(synthetic), "backend_fallback": fallback}
        with open(out / "pretrain.json", "w") as f:
            json.dump(summary, f, indent=2)
    return result
