"""Baseline models' shapes, the training harness, and few-step CLI runs writing results.json and the PNGs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flashxlstm.cli.main import main
from flashxlstm.tasks.harness import TrainConfig, evaluate, lr_at, param_groups, train
from flashxlstm.tasks.zoo import MODEL_NAMES, ModelSize, build_model

TINY = ModelSize(embedding_dim=16, num_blocks=2, num_heads=1, context_length=64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_map_ids_to_logits(name):
    torch.manual_seed(0)
    model = build_model(name, 7, TINY)
    x = torch.randint(0, 7, (3, 11))
    logits = model(x)
    assert logits.shape == (3, 11, 7) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # causal: changing a later token leaves earlier logits unchanged
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 7
    torch.testing.assert_close(model(x2)[:, :6], logits[:, :6])
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_xlstm_ratio_names_pick_the_blocks():
    two_slstm = build_model("xlstm[0:1]", 5, TINY).model.config.block_types
    two_mlstm = build_model("xlstm[1:0]", 5, TINY).model.config.block_types
    mixed = build_model("xLSTM[1:1]", 5, TINY).model.config.block_types
    assert (two_slstm, two_mlstm, mixed) == (["slstm"] * 2, ["mlstm"] * 2, ["mlstm", "slstm"])
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gru", 5, TINY)


def test_harness_learns_a_trivial_copy_task():
    """Predict the current token (a one-step copy): every model class must get it right quickly."""
    def sample(rng):
        x = torch.from_numpy(rng.integers(1, 6, size=(32, 12)))
        return x, x.clone()

    rng = np.random.default_rng(5)
    held_out = [sample(rng)]
    torch.manual_seed(0)
    model = build_model("lstm", 6, TINY)
    cfg = TrainConfig(steps=150, lr=1e-2, warmup_steps=10, eval_every=75)
    run = train(model, sample, {"val": held_out}, cfg)
    assert [p["step"] for p in run["history"]] == [75, 150]
    assert run["history"][-1]["val_accuracy"] > 0.95 and evaluate(model, held_out, "cpu")["accuracy"] > 0.95


def test_schedule_and_weight_decay_groups():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_factor=0.01)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.01, abs=1e-3)
    model = build_model("transformer", 5, TINY)
    decay, no_decay = param_groups(model, 0.1)
    assert any(p is model.embedding.weight for p in no_decay["params"])
    assert any(p is model.head.weight for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"] if p is not model.embedding.weight)


def _read(out):
    results = json.loads((out / "results.json").read_text())
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_cli_formal_language(tmp_path, capsys):
    out = tmp_path / "parity"
    rc = main(["experiment", "formal-language", "--task", "parity", "--model", "xlstm[1:1]", "--steps", "3",
               "--seed", "1", "--out", str(out), "--test-size", "8", "--batch-size", "4", "--embedding-dim", "16",
               "--device", "cpu", "--quiet"])
    assert rc == 0
    r = _read(out)
    assert r["task"] == "parity" and r["model"] == "xlstm[1:1]" and r["steps"] == 3 and r["seed"] == 1
    for key in ("train_accuracy", "test_accuracy", "test_scaled_accuracy", "wall_time_s"):
        assert isinstance(r[key], float)
    assert r["random_accuracy"] == 0.5 and r["test_lengths"] == [40, 256] and r["complete"] is True
    partial = json.loads((out / "results.partial.json").read_text())
    assert partial["complete"] is False and partial["history"] == r["history"]
    assert r["test_scaled_accuracy"] == pytest.approx((r["test_accuracy"] - 0.5) / 0.5)
    assert "test scaled accuracy" in capsys.readouterr().out


def test_cli_mqar_and_errors(tmp_path, capsys):
    out = tmp_path / "mqar"
    rc = main(["experiment", "mqar", "--model", "transformer", "--num-kv-pairs", "4", "--context-length", "32",
               "--vocab-size", "64", "--steps", "2", "--out", str(out), "--test-size", "4", "--batch-size", "2",
               "--embedding-dim", "16", "--quiet"])
    assert rc == 0
    r = _read(out)
    assert r["task"] == "mqar" and r["mqar"]["num_kv_pairs"] == 4 and 0.0 <= r["test_accuracy"] <= 1.0
    assert main(["experiment", "mqar", "--model", "gru", "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["experiment", "mqar", "--model", "lstm", "--num-kv-pairs", "100", "--out",
                 str(tmp_path / "y")]) == 2
    assert "too short" in capsys.readouterr().err


def test_cli_suite(tmp_path):
    out = tmp_path / "suite"
    rc = main(["experiment", "suite", "--tasks", "parity", "majority", "--models", "lstm", "transformer",
               "--steps", "2", "--out", str(out), "--test-size", "4", "--batch-size", "4", "--embedding-dim", "16",
               "--quiet"])
    assert rc == 0
    table = (out / "summary.md").read_text()
    assert "| lstm |" in table and "| transformer |" in table and "majority" in table
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "parity" / "lstm" / "results.json").read_text())["task"] == "parity"
