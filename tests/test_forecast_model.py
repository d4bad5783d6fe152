"""The forecaster (flashxlstm.models.forecast): shapes, masking, inputs, streaming == re-reading, checkpoints."""
import math

import numpy as np
import pytest
import torch

from flashxlstm.models.forecast import ForecastConfig, ForecastStream, instance_scale, xLSTMForecaster

P = 8


def _model(**kw) -> xLSTMForecaster:
    torch.manual_seed(0)
    cfg = dict(patch_size=P, dim=16, num_blocks=2, num_heads=2, max_context=0)
    cfg.update(kw)
    model = xLSTMForecaster(ForecastConfig(**cfg)).eval()
    with torch.no_grad():  # larger recurrent weights than the zero init, so the recurrence matters
        for block in model.blocks:
            block.layer.recurrent_kernel.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


def _series(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)
    return 10 + torch.randn(B, T, generator=g, dtype=torch.float64).cumsum(1) + 3 * torch.sin(t / 3)


def _reread(model, history, stream, horizon, rollout="mask"):
    """What re-reading the whole history gives with the stream's scaling and patch grid."""
    x = (history - stream.loc) / stream.scale
    with torch.no_grad():
        pred = model._forecast_normalized(x, horizon, rollout, pad_left=stream.pad_left)
    return model._finish(pred, horizon, stream.loc, stream.scale, None, None).quantiles


@pytest.mark.parametrize("T,horizon", [(5, 1), (24, P), (37, 2 * P + 3)])
@pytest.mark.parametrize("rollout", ["mask", "median"])
def test_shapes_and_non_crossing_quantiles(model, T, horizon, rollout):
    out = model.forecast(_series(3, T), horizon, rollout=rollout)
    assert out.quantiles.shape == (3, horizon, 9) and out.median.shape == (3, horizon)
    assert torch.isfinite(out.quantiles).all()
    assert (out.quantiles.diff(dim=-1) >= 0).all()
    assert torch.equal(out.median, out.quantiles[..., 4])
    assert out.quantile_levels == pytest.approx(tuple(i / 10 for i in range(1, 10)))


def test_requested_levels_are_the_predicted_ones_or_interpolated(model):
    ctx = _series(2, 30)
    full = model.forecast(ctx, 5).quantiles
    some = model.forecast(ctx, 5, quantiles=[0.1, 0.25, 0.5, 0.9])
    assert some.quantiles.shape == (2, 5, 4)
    torch.testing.assert_close(some.quantiles[..., 0], full[..., 0])
    torch.testing.assert_close(some.quantiles[..., 1], (full[..., 1] + full[..., 2]) / 2)
    torch.testing.assert_close(some.quantiles[..., 3], full[..., 8])
    with pytest.raises(ValueError, match="quantiles must lie in"):
        model.forecast(ctx, 5, quantiles=[0.05])


def test_scaling_uses_observed_values_only():
    x = torch.tensor([[1.0, float("nan"), 3.0, 5.0]], dtype=torch.float64)
    loc, scale = instance_scale(x)
    obs = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    assert loc.item() == pytest.approx(obs.mean().item())
    assert scale.item() == pytest.approx(obs.std(unbiased=False).item())
    loc, scale = instance_scale(torch.full((1, 6), 7.0, dtype=torch.float64))  # constant: no division by zero
    assert loc.item() == 7.0 and scale.item() == pytest.approx(7e-3)


def test_nan_prefix_equals_the_shorter_context(model):
    ctx = _series(2, 45)
    for cut in (3, P, 2 * P + 5):
        padded = ctx.clone()
        padded[:, :cut] = float("nan")
        torch.testing.assert_close(model.forecast(padded, 12).quantiles, model.forecast(ctx[:, cut:], 12).quantiles,
                                   rtol=1e-5, atol=1e-5)


def test_nan_is_value_zero_with_mask_zero(model):
    """A missing step reaches the network as value 0 and mask 0, and the scaling ignores it: nothing else."""
    ctx = _series(1, 4 * P)
    ctx[0, [3, 9, 10, 20]] = float("nan")
    got = model.forecast(ctx, P).quantiles
    loc, scale = instance_scale(ctx)
    x = ((ctx - loc) / scale).float().view(1, 4, P)
    mask = torch.isfinite(x).float()
    with torch.no_grad():
        out, _ = model(torch.nan_to_num(x, nan=0.0), mask)
    want = out[:, -1].sort(-1).values.double() * scale[:, :, None] + loc[:, :, None]
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


def test_list_of_different_lengths_equals_each_alone(model):
    data = [np.asarray(_series(1, T, seed=T)[0]) for T in (11, 40, 23)]
    data[1][[5, 6]] = np.nan
    batch = model.forecast(data, 2 * P + 1).quantiles
    for i, s in enumerate(data):
        torch.testing.assert_close(batch[i], model.forecast(s, 2 * P + 1).quantiles[0], rtol=1e-5, atol=1e-5)


def test_pandas_series_and_dataframe():
    pd = pytest.importorskip("pandas")
    model = _model()
    ctx = _series(2, 30)
    idx = pd.date_range("2024-01-01", periods=30, freq="D")
    frame = pd.DataFrame(ctx.T.numpy(), index=idx, columns=["a", "b"])
    out = model.forecast(frame, 6)
    assert out.columns == ["a", "b"]
    assert list(out.index) == list(pd.date_range("2024-01-31", periods=6, freq="D"))
    torch.testing.assert_close(out.quantiles, model.forecast(ctx, 6).quantiles)
    df = out.to_pandas(0.9)
    assert list(df.columns) == ["a", "b"] and df.shape == (6, 2)
    one = model.forecast(frame["b"], 6)
    torch.testing.assert_close(one.quantiles[0], out.quantiles[1])
    monthly = pd.Series(ctx[0].numpy(), index=pd.period_range("2000-01", periods=30, freq="M"))
    assert str(model.forecast(monthly, 2).index[0]) == "2002-07"
    plain = pd.Series(ctx[0].numpy())                      # a RangeIndex continues
    assert list(model.forecast(plain, 3).index) == [30, 31, 32]


def test_streaming_equals_rereading_on_the_patch_grid(model):
    hist = _series(2, 3 * P + 5)
    stream = model.stream(hist[:, :P + 5])
    stream = model.update(stream, hist[:, P + 5:])          # whole patches: the plain forecast's grid
    got = model.forecast(stream, 2 * P + 3).quantiles
    assert stream.pending.shape[1] == 0 and stream.pad_left == (-hist.shape[1]) % P  # forecast()'s own grid
    torch.testing.assert_close(got, _reread(model, hist, stream, 2 * P + 3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rollout", ["mask", "median"])
def test_streaming_any_update_sizes_equals_rereading(model, rollout):
    hist = _series(3, 70, seed=3)
    hist[1, 40:43] = float("nan")
    stream = model.stream(hist[:, :13])
    seen = 13
    for n in (1, 0, 5, P, 2 * P + 1, 3, 9):
        old = stream
        before = model.forecast(old, 11, rollout=rollout).quantiles
        stream = model.update(stream, hist[:, seen:seen + n])
        seen += n
        assert isinstance(stream, ForecastStream) and stream.length == seen
        torch.testing.assert_close(model.forecast(old, 11, rollout=rollout).quantiles, before)  # old unchanged
        got = model.forecast(stream, 11, rollout=rollout).quantiles
        torch.testing.assert_close(got, _reread(model, hist[:, :seen], stream, 11, rollout), rtol=1e-5, atol=1e-5)
        assert (got.diff(dim=-1) >= 0).all()


def test_fused_backend_matches_the_float64_recurrent_reference():
    fused = _model(backend="fused")
    ref = _model(backend="recurrent").double()
    ctx = _series(2, 29)
    with torch.no_grad():
        a = fused.forecast(ctx, 2 * P).quantiles
        b = ref.forecast(ctx, 2 * P).quantiles
    torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)


def test_max_context_keeps_the_last_steps():
    model = _model(max_context=2 * P)
    ctx = _series(1, 5 * P)
    torch.testing.assert_close(model.forecast(ctx, 4).quantiles, model.forecast(ctx[:, -2 * P:], 4).quantiles)


def test_save_and_load(tmp_path, model):
    ctx = _series(2, 21)
    want = model.forecast(ctx, 9).quantiles
    model.save_pretrained(tmp_path / "a")
    loaded = xLSTMForecaster.from_pretrained(tmp_path / "a")
    assert loaded.config == model.config and not loaded.training
    torch.testing.assert_close(loaded.forecast(ctx, 9).quantiles, want)
    model.save_pretrained(tmp_path / "b", dtype=torch.bfloat16, max_shard_bytes=4096)
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.startswith("model-0") for f in files) > 1
    half = xLSTMForecaster.from_pretrained(tmp_path / "b")
    assert half.dtype == torch.float32
    for (k, v), (_, w) in zip(model.state_dict().items(), half.state_dict().items()):
        torch.testing.assert_close(w, v.to(torch.bfloat16).float(), msg=k)
    assert xLSTMForecaster.from_pretrained(tmp_path / "a", rollout="median").config.rollout == "median"


def test_checkpoint_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError):
        xLSTMForecaster.from_pretrained(tmp_path / "missing")
    model.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"model_type": "flashxlstm-neurips"}')
    with pytest.raises(ValueError, match="not a forecaster checkpoint"):
        xLSTMForecaster.from_pretrained(tmp_path / "c")


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="horizon must be an integer >= 1"):
        model.forecast(_series(1, 10), 0)
    with pytest.raises(ValueError, match=r"series \[1\] have no observed value"):
        model.forecast([np.ones(5), np.full(4, np.nan)], 3)
    with pytest.raises(ValueError, match="inf"):
        model.forecast(torch.tensor([1.0, math.inf, 2.0]), 3)
    with pytest.raises(TypeError, match="context must be"):
        model.forecast("1,2,3", 3)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        model.forecast([np.ones((2, 2))], 3)
    stream = model.stream(_series(2, 10))
    with pytest.raises(ValueError, match=r"shape \(2, n\)"):
        model.update(stream, torch.ones(3, 4))
    with pytest.raises(ValueError, match="quantiles must include 0.5"):
        ForecastConfig(quantiles=(0.1, 0.9))
