"""Pretraining the forecaster (training/forecast.py, `experiment forecast-pretrain`): the loss goes down,
held-out datasets never reach it, the CLI writes a checkpoint that forecasts."""
import json

import numpy as np
import pytest
import torch

from flashxlstm.data.series import HELD_OUT, PRETRAIN
from flashxlstm.models.forecast import ForecastConfig, xLSTMForecaster
from flashxlstm.training.forecast import (PretrainConfig, WindowSampler, pinball_loss, pretrain,
                                          pretrain_real_series, window_loss)


def _cfg(**kw):
    base = dict(time_budget_s=None, steps=40, batch_size=16, context_length=64, prediction_length=32, lr=5e-3,
                warmup_steps=5, synthetic_count=24, synthetic_length=160, eval_windows=32, eval_every=1000,
                log_every=10, device="cpu", model=ForecastConfig(patch_size=16, dim=16, num_blocks=1, num_heads=2))
    base.update(kw)
    return PretrainConfig(**base)


def test_pinball_loss_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0]])                 # levels 0.1, 0.5, 0.9 for one target
    levels = (0.1, 0.5, 0.9)
    y = torch.tensor([2.5])
    want = np.mean([0.1 * 1.5, 0.5 * 0.5, (0.9 - 1) * (2.5 - 3.0)])
    assert pinball_loss(pred, y, levels).item() == pytest.approx(want)
    y_nan = torch.tensor([2.5, float("nan")])
    assert pinball_loss(pred.expand(2, 3), y_nan, levels).item() == pytest.approx(want)


def test_a_short_pretraining_lowers_the_loss(tmp_path):
    real = {"wwwusage": [np.cumsum(np.random.default_rng(0).normal(size=100))]}
    res = pretrain(_cfg(), tmp_path, real_series=real, print_fn=lambda *a: None)
    assert res.steps == 40
    assert res.eval_after < 0.9 * res.eval_before
    assert res.last_loss < res.first_loss
    log = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert log[0]["eval_loss"] == pytest.approx(res.eval_before) and log[-1]["step"] == 40
    summary = json.loads((tmp_path / "pretrain.json").read_text())
    assert summary["real_datasets"] == ["wwwusage"] and summary["steps"] == 40
    model = xLSTMForecaster.from_pretrained(tmp_path / "checkpoint")
    out = model.forecast(np.sin(np.arange(90) / 4), 20)
    assert out.quantiles.shape == (1, 20, 9) and torch.isfinite(out.quantiles).all()


def test_windows_scale_by_their_context_and_mask_only_the_input():
    cfg = _cfg(cpm_prob=1.0, missing_prob=1.0, real_fraction=0.5)
    sampler = WindowSampler([np.arange(300, dtype=np.float64)], [np.arange(40.0), np.arange(70.0)], cfg, seed=0)
    kinds = set()
    for _ in range(12):
        values, inputs = sampler.sample(16)
        assert values.shape == inputs.shape == (16, 96)
        assert torch.isnan(inputs).any(1).all()            # every window has a masked run of patches
        assert not torch.isnan(values[:, -32:]).any()       # the last targets stay observed
        observed = torch.isfinite(inputs).view(16, 6, 16).any(-1)
        first = observed.float().argmax(1)
        assert first.unique().numel() == 1                  # one padding per batch: one group in the model
        assert torch.isfinite(values).view(16, 6, 16).any(-1).float().argmax(1).equal(first)  # first patch kept
        kinds.add(int(first[0]))
        if first[0] == 0:                                   # a full window: scaled by its context part
            ctx = values[0, :64]
            assert abs(ctx.mean().item()) < 1e-4 and ctx.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert 0 in kinds and len(kinds) > 1                    # full windows and padded real stretches both occur


def test_window_loss_ignores_tokens_before_the_first_observation():
    torch.manual_seed(0)
    model = xLSTMForecaster(ForecastConfig(patch_size=4, dim=8, num_blocks=1, num_heads=2))
    values = torch.randn(2, 16)
    values[0, :8] = float("nan")                           # row 0: patches 0, 1 missing, its first token is 2
    got = window_loss(model, values, values.clone())
    x = torch.nan_to_num(values).view(2, 4, 4)
    out, _ = model(x, torch.isfinite(values).float().view(2, 4, 4))
    target = values.view(2, 4, 4)
    levels = model.config.quantiles
    # counted: row 0 token 2 -> patch 3; row 1 tokens 0, 1, 2 -> patches 1, 2, 3 (each 4 steps)
    pred = torch.cat([out[0, 2:3], out[1, :3]]).reshape(-1, len(levels))
    want = pinball_loss(pred, torch.cat([target[0, 3:4], target[1, 1:4]]).reshape(-1), levels)
    torch.testing.assert_close(got, want)


def test_held_out_datasets_never_reach_pretraining(tmp_path):
    assert not set(HELD_OUT) & set(PRETRAIN)
    with pytest.raises(ValueError, match="not pretraining datasets"):
        pretrain_real_series([PRETRAIN[0], HELD_OUT[0]])
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{f"{HELD_OUT[0]}/0": np.arange(50.0)})
    with pytest.raises(ValueError, match="not a pretraining dataset"):
        pretrain_real_series(npz=bad)
    good = tmp_path / "good.npz"
    np.savez(good, **{f"{PRETRAIN[0]}/0": np.arange(50.0), f"{PRETRAIN[0]}/1": np.arange(60.0)})
    got = pretrain_real_series(npz=good)
    assert list(got) == [PRETRAIN[0]] and [len(s) for s in got[PRETRAIN[0]]] == [50, 60]


def test_cli_tiny_run(tmp_path, capsys):
    from flashxlstm.cli.main import main

    out = tmp_path / "run"
    rc = main(["experiment", "forecast-pretrain", "--preset", "tiny", "--no-real", "--device", "cpu",
               "--steps", "3", "--seconds", "60", "--save-dtype", "bfloat16", "--max-shard-mb", "0.01",
               "--out", str(out)])
    assert rc in (0, None)
    assert (out / "checkpoint" / "model.safetensors.index.json").is_file()
    model = xLSTMForecaster.from_pretrained(out / "checkpoint")
    assert model.forecast([np.arange(30.0), np.arange(50.0)], 5).quantiles.shape == (2, 5, 9)
    assert "3 steps" in capsys.readouterr().out


def test_pretrain_config_is_loop_settings_with_a_step_cap_and_a_time_box():
    from flashxlstm.training.settings import LoopSettings

    cfg = _cfg(steps=100, time_budget_s=50.0, generator_weights={"seasonal_profile": 2.0, "random_walk": 1.0})
    assert isinstance(cfg, LoopSettings)
    back = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.model, ForecastConfig) and back.betas == cfg.betas
    # the run ends at the cap or the time box, whichever comes first; the schedule follows the nearer end
    assert cfg.progress(50, 10.0) == pytest.approx(0.5) and cfg.progress(10, 40.0) == pytest.approx(0.8)
    assert _cfg(steps=100, time_budget_s=None).progress(99, 1e9) == pytest.approx(0.99)
    for bad, match in ((dict(steps=0), "steps"), (dict(time_budget_s=0.0), "time_budget_s"),
                       (dict(real_fraction=1.5), "real_fraction"), (dict(context_length=70), "multiples"),
                       (dict(eval_every=0), "eval_every"), (dict(amp="fp8"), "amp"),
                       (dict(generator_weights={"gp": 1.0}), "generator_weights"),
                       (dict(real_weighting="rows"), "real_weighting")):
        with pytest.raises(ValueError, match=match):
            _cfg(**bad)
    with pytest.raises(ValueError, match="unknown training setting"):
        PretrainConfig.from_dict({**cfg.to_dict(), "max_steps": 3})


def test_a_time_box_stops_the_loop_before_the_step_cap(tmp_path):
    res = pretrain(_cfg(steps=10 ** 6, time_budget_s=0.5), real_series=None, print_fn=lambda *a: None)
    assert 0 < res.steps < 10 ** 6 and res.seconds < 5


def test_short_synthetic_batches_are_left_padded_stretches():
    from flashxlstm.data.series_synth import synthetic_series

    cfg = _cfg(short_fraction=1.0, real_fraction=0.0)
    sampler = WindowSampler(synthetic_series(8, 160, seed=0), [], cfg, seed=0)
    lead = [int(np.argmax(np.isfinite(sampler.sample(4, augment=False)[1][0].numpy()))) for _ in range(12)]
    assert all(k % 16 == 0 for k in lead) and any(k > 0 for k in lead)  # whole masked patches in front


def test_real_windows_draw_each_dataset_equally_often():
    """real_weighting="dataset": a dataset of 50 series weighs as much as one of a single series."""
    many = [np.linspace(1.0, 2.0, 64) for _ in range(50)]
    one = [np.linspace(5.0, 6.0, 64)]
    share = {}
    for weighting in ("dataset", "series"):
        sampler = WindowSampler([], {"many": many, "one": one}, _cfg(real_weighting=weighting), seed=0)
        seen = []
        window = sampler._window
        sampler._window = lambda s, r: (seen.append(s[0] == 5.0), window(s, r))[1]
        for _ in range(25):
            sampler.sample(16)
        share[weighting] = np.mean(seen)
    assert 0.4 < share["dataset"] < 0.6 and share["series"] < 0.06
