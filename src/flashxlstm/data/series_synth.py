"""Synthetic time series for pretraining a forecaster: KernelSynth and four structural generators.

Everything is seeded: the same (seed, arguments) give the same series, on any machine (NumPy's PCG64 for
every random choice; the Gaussian-process draws use float64 Cholesky factors, so they agree across devices up
to float64 rounding).

KernelSynth (Ansari et al., 2024, "Chronos", arXiv 2403.07815, Section 4.2), clean-room from its description:
each series is one draw from a zero-mean Gaussian process on L equally spaced points of [0, 1] whose kernel
is a random composition of 1 to `max_kernels` kernels from a bank, joined left to right by a random + or *:

    linear            (x - c)(x' - c) + s,  c in {0, 0.5, 1}
    RBF               exp(-|x - x'|^2 / (2 l^2)),  l in {0.05, 0.1, 0.25, 0.5, 1}
    rational quad.    (1 + |x - x'|^2 / (2 a l^2))^-a,  a in {0.1, 1, 10}, l in {0.1, 0.5}
    periodic          exp(-2 sin^2(pi |x - x'| / p) / l^2),  p = period / L for a period (in steps) drawn from
                      PERIODS (hourly, daily, weekly, monthly, quarterly, yearly cycles), l in {0.5, 1, 2}
    white noise       sigma^2 [x == x'],  sigma in {0.05, 0.1, 0.3}
    constant          c,  c in {0.5, 1, 2}

Structural generators (vectorised NumPy, cheap):
    seasonal_trend    level + trend (linear, damped or exponential) + 1-3 seasonal sinusoid harmonics + AR(1) noise
    regime_switch     piecewise segments (a Markov chain of 2-4 regimes) each with its own level, slope, noise
    random_walk       a random walk with drift, optionally integrated once more (smooth trends)
    intermittent      sparse positive demand: Bernoulli occurrences times log-normal sizes, with a seasonal rate
    seasonal_profile  a free-form seasonal profile (one random value per phase of a short period: 4, 7, 12, ...)
                      repeated with little noise, additive or multiplicative on a positive trending level, so the
                      amplitude grows with the level as in monthly and quarterly sales and production data

`synthetic_series(n, length, seed)` mixes them (KernelSynth half of the time, by default) and returns a list
of float64 arrays of the given length, all finite.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

# seasonal periods in steps, as in KernelSynth's periodic kernels: hourly (24, 48, 168), half-hourly (48, 336),
# daily (7, 14, 30, 365), weekly (52), monthly (6, 12), quarterly (4), and short cycles
PERIODS = (4, 6, 7, 12, 14, 24, 30, 48, 52, 96, 168, 336, 365)


class _Grid:
    """The evaluation grid: x (L,) on [0, 1], the lags |x_i - x_j| as a vector (stationary kernels are functions
    of the lag alone, so they are evaluated on L lags and expanded once) and the index that expands them."""

    def __init__(self, length: int, device=None):
        self.x = torch.linspace(0, 1, length, dtype=torch.float64, device=device)
        self.lag = self.x - self.x[0]
        i = torch.arange(length, device=device)
        self.lag_index = (i[:, None] - i[None, :]).abs()

    def full(self, k: tuple[str, Tensor]) -> Tensor:
        kind, v = k
        return v[self.lag_index] if kind == "lag" else v


def _combine(grid: _Grid, a: tuple[str, Tensor], b: tuple[str, Tensor], op) -> tuple[str, Tensor]:
    if a[0] == b[0] == "lag":
        return "lag", op(a[1], b[1])
    return "full", op(grid.full(a), grid.full(b))


def _kernel_bank(rng: np.random.Generator, length: int) -> tuple[str, Callable]:
    """One random kernel of the bank: (description, fn(grid) -> ("lag", (L,)) or ("full", (L, L))), float64."""
    kind = rng.choice(["linear", "rbf", "rq", "periodic", "periodic", "white", "constant"])
    if kind == "linear":
        c, s = float(rng.choice([0.0, 0.5, 1.0])), float(rng.choice([0.0, 0.1]))
        return f"linear(c={c})", lambda g: ("full", (g.x[:, None] - c) * (g.x[None, :] - c) + s)
    if kind == "rbf":
        ls = float(rng.choice([0.05, 0.1, 0.25, 0.5, 1.0]))
        return f"rbf(l={ls})", lambda g: ("lag", torch.exp(-g.lag ** 2 / (2 * ls ** 2)))
    if kind == "rq":
        a, ls = float(rng.choice([0.1, 1.0, 10.0])), float(rng.choice([0.1, 0.5]))
        return f"rq(a={a},l={ls})", lambda g: ("lag", (1 + g.lag ** 2 / (2 * a * ls ** 2)) ** (-a))
    if kind == "periodic":
        period, ls = int(rng.choice(PERIODS)), float(rng.choice([0.5, 1.0, 2.0]))
        p = period / length
        return f"periodic(p={period},l={ls})", \
            lambda g: ("lag", torch.exp(-2 * torch.sin(torch.pi * g.lag / p) ** 2 / ls ** 2))
    if kind == "white":
        sigma = float(rng.choice([0.05, 0.1, 0.3]))
        return f"white({sigma})", lambda g: ("lag", sigma ** 2 * (g.lag == 0).to(g.lag.dtype))
    c = float(rng.choice([0.5, 1.0, 2.0]))
    return f"constant({c})", lambda g: ("lag", torch.full_like(g.lag, c))


def random_kernel(rng: np.random.Generator, length: int, max_kernels: int = 5) -> tuple[str, Callable]:
    """A composition of 1..max_kernels bank kernels joined by random + and * (left to right); the function
    maps a grid to the covariance matrix (L, L)."""
    desc, fn = _kernel_bank(rng, length)
    for _ in range(int(rng.integers(1, max_kernels + 1)) - 1):
        d2, f2 = _kernel_bank(rng, length)
        if rng.random() < 0.5:
            desc, fn = f"({desc} + {d2})", (lambda a, b: lambda g: _combine(g, a(g), b(g), torch.add))(fn, f2)
        else:
            desc, fn = f"({desc} * {d2})", (lambda a, b: lambda g: _combine(g, a(g), b(g), torch.mul))(fn, f2)
    return desc, lambda g: g.full(fn(g))


def kernel_synth(n: int, length: int = 1024, seed: int = 0, *, max_kernels: int = 5, device=None,
                 return_kernels: bool = False):
    """n KernelSynth series of `length` steps (float64 NumPy arrays), drawn in one batched Cholesky on `device`
    (default CPU). return_kernels: also return each series' kernel formula."""
    if n < 0 or length < 2:
        raise ValueError(f"kernel_synth: need n >= 0 and length >= 2, got n={n}, length={length}")
    rng = np.random.default_rng(seed)
    grid = _Grid(length, device)
    kernels = [random_kernel(rng, length, max_kernels) for _ in range(n)]
    out: list[np.ndarray] = []
    for start in range(0, n, 64):  # bounded memory: 64 covariance matrices at a time
        chunk = kernels[start:start + 64]
        K = torch.stack([fn(grid) for _, fn in chunk])  # symmetric by construction
        z = torch.as_tensor(rng.standard_normal((len(chunk), length)), dtype=torch.float64, device=device)
        diag = K.diagonal(dim1=1, dim2=2)
        diag.add_(1e-6 * diag.abs().mean(1, keepdim=True).clamp(min=1e-6))  # jitter for the Cholesky factor
        L, info = torch.linalg.cholesky_ex(K)
        bad = (info > 0).nonzero().squeeze(1).tolist()
        samples = (L @ z[:, :, None]).squeeze(2)
        for i in bad:  # not positive definite to float64 precision: the symmetric square root instead
            w, V = torch.linalg.eigh(K[i])
            samples[i] = V @ (w.clamp(min=0).sqrt() * (V.T @ z[i]))
        out.extend(samples.cpu().numpy())
    return (out, [d for d, _ in kernels]) if return_kernels else out


def seasonal_trend(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    level = rng.normal(0, 5)
    kind = rng.integers(3)
    slope = rng.normal(0, 0.02)
    trend = slope * t if kind == 0 else slope * 50 * (1 - np.exp(-t / rng.uniform(50, 500))) if kind == 1 else \
        np.expm1(rng.uniform(-1, 1) * t / length)
    season = np.zeros(length)
    for _ in range(rng.integers(1, 4)):
        period = float(rng.choice(PERIODS))
        for h in range(1, rng.integers(1, 4) + 1):
            season += rng.normal(0, 1) / h * np.sin(2 * np.pi * h * t / period + rng.uniform(0, 2 * np.pi))
    phi, sigma = rng.uniform(0, 0.95), rng.uniform(0.05, 0.5)
    noise = _ar1(rng.normal(0, sigma, length), phi)
    return level + trend + season + noise


def regime_switch(rng: np.random.Generator, length: int) -> np.ndarray:
    k = int(rng.integers(2, 5))
    levels, slopes, sigmas = rng.normal(0, 3, k), rng.normal(0, 0.02, k), rng.uniform(0.05, 1.0, k)
    stay = rng.uniform(0.95, 0.995)
    switch = rng.random(length) > stay                  # a Markov chain that jumps to a random regime
    jump_to = rng.integers(k, size=length)
    last = np.maximum.accumulate(np.where(switch, np.arange(length), -1))
    state = np.where(last >= 0, jump_to[np.maximum(last, 0)], 0)
    value = _ar1(0.1 * levels[state] + slopes[state], 0.9)  # the level drifts towards the regime's
    return value + rng.normal(0, 1, length) * sigmas[state]


def _ar1(u: np.ndarray, phi: float) -> np.ndarray:
    """x_t = phi x_{t-1} + u_t from x_{-1} = 0 (a plain loop over Python floats: fast enough, exact)."""
    out, v = [], 0.0
    for x in u.tolist():
        v = phi * v + x
        out.append(v)
    return np.asarray(out)


def random_walk(rng: np.random.Generator, length: int) -> np.ndarray:
    x = np.cumsum(rng.normal(rng.normal(0, 0.05), 1, length))
    return np.cumsum(x) / np.sqrt(length) if rng.random() < 0.3 else x


def intermittent(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length)
    period = float(rng.choice(PERIODS))
    rate = np.clip(rng.uniform(0.05, 0.6) * (1 + 0.5 * np.sin(2 * np.pi * t / period)), 0, 1)
    return (rng.random(length) < rate) * np.round(rng.lognormal(rng.uniform(0, 2), 0.5, length))


# the seasonal periods of short business series (quarterly, weekly, monthly, hourly, half-hourly), the ones
# a free-form profile is drawn for
PROFILE_PERIODS = (4, 4, 7, 7, 12, 12, 12, 24, 48, 52)


def seasonal_profile(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    period = int(rng.choice(PROFILE_PERIODS))
    shape = rng.normal(0, 1, period)
    if rng.random() < 0.5:  # a smooth profile: circular moving average over a few phases
        k = int(rng.integers(2, max(3, period // 3 + 1)))
        shape = np.convolve(np.concatenate([shape[-k:], shape, shape[:k]]), np.ones(k) / k, "same")[k:k + period]
    shape = (shape - shape.mean()) / max(shape.std(), 1e-6)
    phase = int(rng.integers(period))
    season = shape[(t.astype(np.int64) + phase) % period]
    drift = rng.normal(0, 0.05) * np.cumsum(rng.normal(0, 1, length)) / np.sqrt(period)  # slow profile wander
    growth = rng.uniform(-0.5, 2.0) * t / length
    level = np.exp(growth + 0.1 * _ar1(rng.normal(0, 0.05, length), 0.98))
    amplitude = rng.uniform(0.05, 0.4)
    noise = rng.normal(0, rng.uniform(0.0, 0.15) * amplitude, length)
    if rng.random() < 0.6:  # multiplicative: the swing scales with the level
        return rng.uniform(1, 100) * level * (1 + amplitude * (season + noise + drift / 10))
    return rng.uniform(1, 100) * (level + amplitude * (season + noise + drift / 10))


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "seasonal_trend": seasonal_trend, "regime_switch": regime_switch, "random_walk": random_walk,
    "intermittent": intermittent, "seasonal_profile": seasonal_profile,
}


def synthetic_series(n: int, length: int = 1024, seed: int = 0, *, kernel_synth_fraction: float = 0.5,
                     generator_weights: dict[str, float] | None = None, device=None) -> list[np.ndarray]:
    """n series of `length` steps: round(n * kernel_synth_fraction) from KernelSynth, the rest drawn (seeded)
    from GENERATORS with probabilities proportional to `generator_weights` (default: equal; a name left out
    gets weight 0); the order is shuffled by the same seed."""
    if not 0 <= kernel_synth_fraction <= 1:
        raise ValueError(f"synthetic_series: kernel_synth_fraction must be in [0, 1], got {kernel_synth_fraction}")
    weights = {name: 1.0 for name in GENERATORS} if generator_weights is None else dict(generator_weights)
    unknown = sorted(set(weights) - set(GENERATORS))
    if unknown or any(not (w >= 0) for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"synthetic_series: generator_weights must map names of {sorted(GENERATORS)} to weights "
                         f">= 0 with a positive sum, got {generator_weights}")
    rng = np.random.default_rng(seed)
    n_gp = round(n * kernel_synth_fraction)
    series = kernel_synth(n_gp, length, seed=int(rng.integers(2 ** 31)), device=device)
    names = list(GENERATORS)
    p = np.array([weights.get(name, 0.0) for name in names], dtype=np.float64)
    p /= p.sum()
    for _ in range(n - n_gp):
        series.append(GENERATORS[names[int(rng.choice(len(names), p=p))]](rng, length))
    order = rng.permutation(n)
    return [np.asarray(series[i], dtype=np.float64) for i in order]
