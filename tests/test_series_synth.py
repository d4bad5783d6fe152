"""Synthetic pretraining series (data/series_synth.py): seeded, finite, the requested lengths, valid kernels."""
import numpy as np
import pytest
import torch

from flashxlstm.data.series_synth import GENERATORS, PERIODS, _Grid, kernel_synth, random_kernel, synthetic_series


def test_kernel_synth_is_seeded_finite_and_sized():
    a, kernels = kernel_synth(6, 96, seed=3, return_kernels=True)
    b = kernel_synth(6, 96, seed=3)
    c = kernel_synth(6, 96, seed=4)
    assert len(a) == 6 and all(s.shape == (96,) and s.dtype == np.float64 for s in a)
    assert all(np.isfinite(s).all() for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(1 <= k.count("+") + k.count("*") + 1 <= 5 for k in kernels)


def test_random_kernels_are_valid_covariances():
    rng = np.random.default_rng(0)
    grid = _Grid(64)
    for _ in range(30):
        desc, fn = random_kernel(rng, 64, max_kernels=5)
        K = fn(grid)
        n_kernels = desc.count("+") + desc.count("*") + 1
        assert 1 <= n_kernels <= 5
        assert K.shape == (64, 64) and torch.allclose(K, K.T)
        assert torch.linalg.eigvalsh(K).min() > -1e-8 * K.diagonal().abs().max()  # positive semi-definite


def test_periodic_kernel_draws_repeat_with_their_period():
    """A pure periodic kernel: the draw at t and t + period agree up to the Cholesky jitter."""
    rng = np.random.default_rng(1)
    while True:
        desc, fn = random_kernel(rng, 128, max_kernels=1)
        if desc.startswith("periodic") and int(desc.split("p=")[1].split(",")[0]) <= 48:
            break
    period = int(desc.split("p=")[1].split(",")[0])
    K = fn(_Grid(128))
    assert torch.allclose(K[0, :128 - period], K[period, period:], atol=1e-9)
    assert period in PERIODS


def test_synthetic_series_mix_is_seeded_finite_and_sized():
    a = synthetic_series(12, 80, seed=0, kernel_synth_fraction=0.5)
    b = synthetic_series(12, 80, seed=0, kernel_synth_fraction=0.5)
    assert len(a) == 12 and all(s.shape == (80,) and np.isfinite(s).all() for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(synthetic_series(5, 40, seed=1, kernel_synth_fraction=0.0)) == 5
    for name, gen in GENERATORS.items():
        x = gen(np.random.default_rng(7), 200)
        assert x.shape == (200,) and np.isfinite(x).all(), name
    assert (GENERATORS["intermittent"](np.random.default_rng(0), 500) >= 0).all()
    with pytest.raises(ValueError, match="kernel_synth_fraction"):
        synthetic_series(2, 10, kernel_synth_fraction=2.0)
    with pytest.raises(ValueError, match="length >= 2"):
        kernel_synth(2, 1)


def test_seasonal_profile_repeats_its_period_and_weights_pick_generators():
    from flashxlstm.data.series_synth import PROFILE_PERIODS, seasonal_profile

    def twice_differenced(x, lag):  # removes a profile repeating at `lag` and a locally linear level
        y = x[lag:] - x[:-lag]
        return np.abs(y[lag:] - y[:-lag]).mean()

    for seed in range(8):
        x = seasonal_profile(np.random.default_rng(seed), 240)
        assert x.shape == (240,) and np.isfinite(x).all()
        # differencing at the profile's period leaves far less than at a lag that is no period (5)
        best = min(twice_differenced(x, p) for p in set(PROFILE_PERIODS))
        assert best < 0.4 * twice_differenced(x, 5)
    only = synthetic_series(6, 64, seed=3, kernel_synth_fraction=0.0, generator_weights={"intermittent": 1.0})
    assert all((s >= 0).all() and (s == np.round(s)).all() for s in only)
    with pytest.raises(ValueError, match="generator_weights"):
        synthetic_series(2, 64, generator_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="generator_weights"):
        synthetic_series(2, 64, generator_weights={"intermittent": 0.0})
