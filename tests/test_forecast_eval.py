"""The forecast evaluation (tasks/forecast*.py): metrics against hand-computed values, seasonal naive exact
and equal to statsforecast's, rolling-origin windows, the statsforecast baselines' quantiles, PatchTST, and
a tiny end-to-end `flashxlstm experiment forecast` run."""
import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from flashxlstm.tasks.forecast import make_windows
from flashxlstm.tasks.forecast_baselines import seasonal_naive, seasonal_naive_point, statsforecast_quantiles
from flashxlstm.tasks.forecast_metrics import (dataset_scores, geometric_mean, mase, pinball_loss,
                                               relative_geomean, seasonal_scale, wql)

Q3 = (0.1, 0.5, 0.9)


def test_pinball_by_hand():
    np.testing.assert_allclose(pinball_loss(np.array([10.0]), np.array([[8.0, 10.0, 12.0]]), Q3),
                               [[0.2, 0.0, 0.2]])
    np.testing.assert_allclose(pinball_loss(np.array(10.0), np.array([8.0, 12.0]), (0.9, 0.9)), [1.8, 0.2])


def test_mase_by_hand():
    ctx = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    assert seasonal_scale(ctx, 1) == pytest.approx(1.75)  # |1| + |1| + |2| + |3|, over 4
    assert seasonal_scale(ctx, 2) == pytest.approx(10 / 3)  # |3-1| + |5-2| + |8-3|, over 3
    assert mase(np.array([9.0, 11.0]), np.array([10.0, 10.0]), ctx, 1) == pytest.approx(1 / 1.75)
    assert mase(np.array([9.0, 12.0]), np.array([10.0, 10.0]), ctx, 2) == pytest.approx(1.5 / (10 / 3))
    assert math.isnan(mase(np.array([1.0]), np.array([2.0]), np.ones(5), 1))  # zero scale: no MASE
    with pytest.raises(ValueError, match="more than 4 points"):
        seasonal_scale(ctx[:4], 4)


def test_wql_by_hand():
    ys = [np.array([10.0]), np.array([-4.0, 6.0])]
    fcs = [np.array([[8.0, 10.0, 12.0]]), np.array([[-5.0, -4.0, 0.0], [6.0, 7.0, 8.0]])]
    # pinball sums: window 1: 0.2 + 0 + 0.2; window 2 step 1: 0.1 + 0 + 0.4, step 2: 0 + 0.5 + 0.2 -> 1.6
    assert wql(ys, fcs, Q3) == pytest.approx(2 * 1.6 / (3 * 20))
    # a point forecast at every level: WQL = sum |error| / sum |y| (the weighted absolute percentage error)
    assert wql([np.array([2.0, 4.0])], [np.array([[3.0] * 3, [3.0] * 3])], Q3) == pytest.approx(2 / 6)


def test_dataset_scores_and_geometric_means():
    ctx = [np.array([1.0, 2.0, 3.0, 5.0, 8.0]), np.ones(5)]
    ys = [np.array([9.0, 11.0]), np.array([1.0, 1.0])]
    fcs = [np.full((2, 3), 10.0), np.full((2, 3), 1.0)]
    s = dataset_scores(ys, fcs, ctx, 1, Q3)
    assert s["mase"] == pytest.approx(1 / 1.75) and s["windows"] == 2 and s["windows_without_mase"] == 1
    assert s["wql"] == pytest.approx(2 * 3 * 2 * 0.5 / (3 * 22))  # |error| 1 twice, 0.5 per level on average
    assert geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5)
    assert math.isnan(geometric_mean([])) and math.isnan(geometric_mean([1.0, 0.0]))
    scores = {"a": {"m": {"mase": 1.0}, "sn": {"mase": 2.0}}, "b": {"m": {"mase": 3.0}, "sn": {"mase": 1.5}}}
    assert relative_geomean(scores, "m", "sn", "mase") == pytest.approx(1.0)  # sqrt(0.5 * 2)


def test_seasonal_naive_exact():
    ctx = np.arange(1.0, 9.0)
    np.testing.assert_array_equal(seasonal_naive_point(ctx, 7, 3), [6, 7, 8, 6, 7, 8, 6])
    f = seasonal_naive([np.array([1.0, 2.0, 4.0])], 2, 1, Q3)[0]  # differences 1, 2: sigma = sqrt(2.5)
    z = NormalDist().inv_cdf(0.9)
    np.testing.assert_allclose(f[:, 1], [4.0, 4.0])
    np.testing.assert_allclose(f[:, 2], [4.0 + z * math.sqrt(2.5), 4.0 + z * math.sqrt(2.5) * math.sqrt(2)])
    np.testing.assert_allclose(f[:, 0], [4.0 - z * math.sqrt(2.5), 4.0 - z * math.sqrt(5.0)])


def test_seasonal_naive_matches_statsforecast():
    from statsforecast.models import SeasonalNaive

    from flashxlstm.tasks.forecast_metrics import QUANTILES
    y = np.random.default_rng(0).normal(size=53).cumsum() + 10
    ours = seasonal_naive([y], 17, 7, QUANTILES)[0]
    ref = SeasonalNaive(7).forecast(y=y, h=17, level=[20, 40, 60, 80])
    np.testing.assert_allclose(ours[:, 4], ref["mean"], rtol=0, atol=1e-12)
    for lo, level in zip(range(4), (80, 60, 40, 20)):
        np.testing.assert_allclose(ours[:, lo], np.asarray(ref[f"lo-{level}"]), rtol=1e-9)
        np.testing.assert_allclose(ours[:, 8 - lo], np.asarray(ref[f"hi-{level}"]), rtol=1e-9)


def test_statsforecast_quantiles_shape_order_and_fallback():
    from flashxlstm.tasks.forecast_metrics import QUANTILES
    y = 10 + np.sin(np.arange(40) * 2 * np.pi / 4) + 0.1 * np.random.default_rng(1).normal(size=40)
    info = {}
    f = statsforecast_quantiles("auto_theta", [y, y[:30]], 5, 4, QUANTILES, info)
    assert f.shape == (2, 5, 9) and np.all(np.diff(f, axis=-1) >= 0) and info.get("fallbacks", 0) == 0
    assert np.abs(f[0, :, 4] - (10 + np.sin(np.arange(40, 45) * 2 * np.pi / 4))).max() < 0.5
    with pytest.raises(ValueError, match="whole-number levels"):
        statsforecast_quantiles("auto_ets", [y], 2, 4, (0.123, 0.5))


def test_rolling_origin_windows():
    s = np.arange(20.0)
    w = make_windows([s, s[:9]], horizon=3, season=4, origins=2, max_context=10)
    # series 0: origins 14 and 17; series 1: origin 3 is not past a season (dropped), origin 6 kept
    assert [len(c) for c in w.contexts] == [10, 10, 6] and w.series_index == [0, 0, 1] and w.dropped == 1
    np.testing.assert_array_equal(w.contexts[0], s[4:14])
    np.testing.assert_array_equal(w.targets[1], s[17:20])
    np.testing.assert_array_equal(w.train[0], s[:14])
    np.testing.assert_array_equal(w.train[1], s[:6])


def test_patchtst_learns_a_season():
    from flashxlstm.tasks.forecast_patchtst import PatchTSTConfig, fit_patchtst, predict_patchtst
    t = np.arange(240)
    s = 5 + np.sin(2 * np.pi * t / 12) + 0.05 * np.random.default_rng(0).normal(size=240)
    cfg = PatchTSTConfig(dim=16, depth=1, steps=30, batch_size=32, lr=1e-2, time_budget_s=None)
    model, info = fit_patchtst([s[:200]], 12, 12, Q3, 256, cfg)
    f = predict_patchtst(model, [s[:228]])
    assert f.shape == (1, 12, 3) and info["steps"] == 30
    assert np.abs(f[0, :, 1] - s[228:]).mean() < 0.3  # seasonal naive's error here is ~0.07, a mean forecast's ~0.64


def test_experiment_forecast_end_to_end(tmp_path, capsys):
    from flashxlstm.cli.main import main
    from flashxlstm.models.forecast import ForecastConfig, xLSTMForecaster
    import torch
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    xLSTMForecaster(ForecastConfig(patch_size=4, dim=16, num_blocks=1, num_heads=2)).save_pretrained(ckpt)
    out = tmp_path / "run"
    rc = main(["experiment", "forecast", "--out", str(out), "--checkpoint", str(ckpt), "--datasets", "shampoo",
               "lynx", "--origins", "2", "--patchtst-steps", "3", "--quiet"])
    assert rc in (0, None)
    res = json.loads((out / "results.json").read_text())
    assert set(res["scores"]) == {"shampoo", "lynx"}
    for d in ("shampoo", "lynx"):
        per = res["scores"][d]
        assert set(per) == {"seasonal_naive", "auto_ets", "auto_arima", "auto_theta", "patchtst", "xlstm"}
        assert all(np.isfinite(per[m]["mase"]) and per[m]["wql"] > 0 and per[m]["windows"] == 2 for m in per)
    sn = res["relative_geomean"]["seasonal_naive"]
    assert sn["mase"] == 1.0 and sn["wql"] == 1.0
    assert res["xlstm"]["checkpoint"] == str(ckpt)
    table = (out / "results.md").read_text()
    assert "| xlstm |" in table and "| shampoo |" in table
    assert (out / "plots" / "shampoo.png").stat().st_size > 1000 and (out / "plots" / "lynx.png").is_file()
    # a second run fits only seasonal naive (checked equal) and the forecaster, the rest comes from the first
    again = tmp_path / "again"
    assert main(["experiment", "forecast", "--out", str(again), "--checkpoint", str(ckpt), "--datasets", "lynx",
                 "--origins", "2", "--models", "seasonal_naive", "xlstm", "--reuse", str(out / "results.json"),
                 "--no-plots", "--quiet"]) == 0
    res2 = json.loads((again / "results.json").read_text())
    assert res2["config"]["reused_models"] == ["auto_ets", "auto_arima", "auto_theta", "patchtst"]
    assert res2["scores"]["lynx"]["auto_ets"]["mase"] == res["scores"]["lynx"]["auto_ets"]["mase"]
    assert res2["scores"]["lynx"]["xlstm"]["mase"] == pytest.approx(res["scores"]["lynx"]["xlstm"]["mase"])
    assert "| auto_theta |" in (again / "results.md").read_text()
    assert main(["experiment", "forecast", "--out", str(tmp_path / "y"), "--datasets", "lynx", "--models",
                 "seasonal_naive", "--reuse", str(out / "results.json")]) == 2
    assert "the earlier run has origins=2, this one 3" in capsys.readouterr().err
    assert main(["experiment", "forecast", "--out", str(tmp_path / "x"), "--datasets", "lynx"]) == 2
    assert "the model 'xlstm' needs --checkpoint" in capsys.readouterr().err


def test_experiment_forecast_pretrains_first(tmp_path):
    """--pretrain-seconds runs forecast-pretrain's entry point (its tiny preset here), then evaluates that model."""
    from flashxlstm.cli.main import main
    out = tmp_path / "run"
    assert main(["experiment", "forecast", "--out", str(out), "--pretrain-seconds", "2", "--pretrain-preset", "tiny",
                 "--datasets", "lynx", "--origins", "2", "--models", "seasonal_naive", "xlstm", "--no-plots",
                 "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["xlstm"]["pretrained_here"] and res["xlstm"]["steps"] >= 1 and res["xlstm"]["preset"] == "tiny"
    assert (out / "pretrain" / "checkpoint" / "config.json").is_file()
    assert np.isfinite(res["scores"]["lynx"]["xlstm"]["mase"])
