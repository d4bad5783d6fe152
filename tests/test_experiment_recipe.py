"""The harness follows the official xLSTM experiment recipe: the official model trains step for step like ours,
the model's own decay groups, no clipping by default, padding cannot matter, and runs fit a time budget."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xlstm

from flashxlstm import from_official
from flashxlstm.cli.main import main
from flashxlstm.tasks import formal_languages as fl
from flashxlstm.tasks.experiments import plot_results
from flashxlstm.tasks.harness import TrainConfig, _step, param_groups, train
from flashxlstm.tasks.zoo import StatelessLM, ModelSize, build_model

TINY = ModelSize(embedding_dim=16, num_blocks=2, num_heads=1)


def _official_parity_model(slstm_at: list[int], dim: int = 32) -> xlstm.xLSTMLMModel:
    """The official parity config (1 head, vocab 3, context 256) at a smaller width."""
    cfg = xlstm.xLSTMLMModelConfig(
        mlstm_block=xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(num_heads=1)),
        slstm_block=xlstm.sLSTMBlockConfig(slstm=xlstm.sLSTMLayerConfig(num_heads=1, backend="vanilla"),
                                           feedforward=xlstm.FeedForwardConfig()),
        slstm_at=slstm_at, num_blocks=2, embedding_dim=dim, context_length=256, vocab_size=3)
    model = xlstm.xLSTMLMModel(cfg)
    model.reset_parameters()
    return model


@pytest.mark.parametrize("slstm_at", [[0, 1], [1]], ids=["xlstm01", "xlstm11"])
def test_official_model_trains_like_ours(slstm_at):
    """Same weights, same batches, the official optimizer (its decay groups, AdamW defaults, no clipping) vs
    our harness's optimizer and step: the losses agree at every step."""
    torch.manual_seed(0)
    off = _official_parity_model(slstm_at)
    ours = StatelessLM(from_official(off))
    decay, no_decay = off._create_weight_decay_optim_groups()
    opt_off = torch.optim.AdamW([{"params": list(decay), "weight_decay": 0.1},
                                 {"params": list(no_decay), "weight_decay": 0.0}], lr=1e-3)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1)
    opt_ours = cfg.optimizer(ours)
    rng = np.random.default_rng(0)
    for step in range(4):
        x, y = fl.sample_batch("parity", rng, 8, 3, 20)
        lr = 1e-3 * (step + 1) / 4
        for g in opt_off.param_groups:
            g["lr"] = lr
        opt_off.zero_grad()
        loss_off = F.cross_entropy(off(x).reshape(-1, 3), y.reshape(-1), ignore_index=-1)
        loss_off.backward()
        opt_off.step()
        _, loss_ours = _step(ours, opt_ours, x, y, cfg, lr)
        assert abs(loss_off.item() - loss_ours.item()) < 1e-5, step


def test_xlstm_uses_its_own_decay_groups():
    model = build_model("xlstm[1:1]", 3, TINY)
    decay, no_decay = param_groups(model, 0.1)
    own_decay, _ = model.model.param_groups(0.1)
    assert {id(p) for p in decay["params"]} == {id(p) for p in own_decay["params"]}
    slstm = model.model.stack.blocks[1].layer
    for p in (slstm.recurrent_kernel, slstm.bias, model.model.token_embedding.weight):  # not decayed officially
        assert any(p is q for q in no_decay["params"])
    # the generic rule (>= 2-D tensors) would decay the sLSTM recurrent matrix, which the official groups do not
    assert slstm.recurrent_kernel.dim() >= 2


def test_defaults_are_the_official_recipe_and_cli_flags_reach_the_config(tmp_path):
    cfg = TrainConfig()
    assert cfg.grad_clip == 0.0 and cfg.betas == (0.9, 0.999) and cfg.amp == "none" and cfg.weight_decay == 0.1
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))
    out = tmp_path / "run"
    assert main(["experiment", "formal-language", "--task", "parity", "--model", "lstm", "--steps", "20",
                 "--out", str(out), "--test-size", "4", "--batch-size", "4", "--embedding-dim", "8", "--device", "cpu",
                 "--grad-clip", "0.5", "--beta2", "0.98", "--min-lr-factor", "0.01", "--quiet"]) == 0
    tc = json.loads((out / "results.json").read_text())["train_config"]
    assert (tc["grad_clip"], tc["betas"], tc["min_lr_factor"], tc["warmup_steps"]) == (0.5, [0.9, 0.98], 0.01, 2)


@pytest.mark.parametrize("name", ["xlstm[1:1]", "xlstm[1:0]", "transformer", "lstm"])
def test_right_padding_to_a_fixed_context_cannot_change_the_loss(name):
    """Why training batches are not padded to 256 like the official data: every model is causal, so PAD after
    the answer changes no answer logit (it only costs compute)."""
    torch.manual_seed(0)
    model = build_model(name, 3, TINY).eval()
    x, y = fl.sample_batch("parity", np.random.default_rng(1), 6, 3, 20)
    pad = 64 - x.shape[1]
    xp, yp = F.pad(x, (0, pad), value=fl.PAD), F.pad(y, (0, pad), value=fl.IGNORE)
    with torch.no_grad():
        a = F.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1), ignore_index=-1)
        b = F.cross_entropy(model(xp).reshape(-1, 3), yp.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_time_budget_fits_the_schedule_and_stops_early(tmp_path):
    calls = {"n": 0}

    def sample(rng):  # fast while the budget is measured, then slow: the run has to stop early
        calls["n"] += 1
        if calls["n"] > 15:
            time.sleep(0.05)
        x = torch.from_numpy(rng.integers(1, 5, size=(4, 6)))
        return x, x.clone()

    held_out = [sample(np.random.default_rng(0))]
    calls["n"] = 0
    model = build_model("lstm", 5, TINY)
    cfg = TrainConfig(steps=100000, warmup_steps=10000, eval_every=10000, lr=1e-3, time_budget_s=3.0)
    run = train(model, sample, {"val": held_out}, cfg)
    fitted = run["train_config"]
    assert run["requested_train_config"]["steps"] == 100000 and 1 <= fitted["steps"] < 100000
    assert fitted["warmup_steps"] == round(10000 * fitted["steps"] / 100000)
    assert run["stopped_early"] is True and run["steps_done"] < fitted["steps"]
    assert run["history"][-1]["step"] == run["steps_done"] and "val_accuracy" in run["history"][-1]
    untimed = train(build_model("lstm", 5, TINY), sample, {"val": held_out}, TrainConfig(steps=3, eval_every=3))
    assert untimed["stopped_early"] is False and untimed["steps_done"] == 3 and "budget" not in untimed


def test_plot_results_redraws_the_curve(tmp_path):
    out = tmp_path / "m"
    assert main(["experiment", "mqar", "--model", "lstm", "--num-kv-pairs", "2", "--context-length", "16",
                 "--vocab-size", "16", "--steps", "2", "--out", str(out), "--test-size", "2", "--batch-size", "2",
                 "--embedding-dim", "8", "--quiet"]) == 0
    (out / "learning_curve.png").unlink()
    assert plot_results(out).read_bytes()[:4] == b"\x89PNG"


def _gpu_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments_gpu.py"
    spec = importlib.util.spec_from_file_location("experiments_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_grid_uses_the_paper_recipe():
    mod = _gpu_script()
    args = mod.argparse.Namespace(steps=20000, seed=0, device="cuda", budget=300.0, mlstm_backend="auto",
                                  slstm_backend="auto", amp="none", smoke=False, parity_models=mod.PARITY_MODELS,
                                  mqar_models=mod.MQAR_MODELS, mqar_vocab=256, mqar_zoology=True)
    grid = dict(mod.jobs(args))
    assert len(grid) == 9 and "parity_xlstm01" in grid and "mqar_v8192_xlstm10" in grid
    argv = grid["parity_xlstm01"]

    def flag(name):
        return argv[argv.index(name) + 1]

    assert (flag("--batch-size"), flag("--lr"), flag("--warmup-steps"), flag("--grad-clip"), flag("--test-size"),
            flag("--embedding-dim"), flag("--num-heads")) == ("256", "1e-3", "2000", "0", "8192", "64", "1")
    rows = [mod.row("parity_lstm", {"task": "parity", "model": "lstm", "steps": 5, "stopped_early": True,
                                    "random_accuracy": 0.5, "history": [{"step": 5, "train_len_accuracy": 1.0,
                                                                         "test_len_accuracy": 0.75}],
                                    "step_time_ms": 2.0, "wall_time_s": 3.0,
                                    "train_config": {"steps": 5}}, "ok"), mod.row("mqar_x", None, "killed")]
    table = mod.summary_md(rows, "header")
    assert "| parity | lstm | 5 / 5 / 5 | stopped early | 1.000 (scaled) | 0.500 (scaled) |" in table
    assert "| mqar_x | - | - | killed |" in table
