"""`--seeds N` (per-seed runs, median, min, fraction solved), the Figure-4 grid summary, the length curriculum,
and the formal-language CLI defaults (the recipe of docs/experiments.md) on a tiny budget."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flashxlstm.cli.main import main
from flashxlstm.tasks import formal_languages as fl
from flashxlstm.tasks.experiments import _CurriculumSampler, grid_markdown, grid_summary, seed_summary

TINY = ["--test-size", "4", "--batch-size", "4", "--embedding-dim", "8", "--device", "cpu", "--quiet"]


def test_seed_summary_median_min_and_fraction_solved():
    runs = [{"seed": s, "test_scaled_accuracy": a, "steps": 9, "wall_time_s": 1.0}
            for s, a in [(3, 1.0), (4, 0.95), (5, 0.2), (6, 0.9)]]
    s = seed_summary(runs, "test_scaled_accuracy")
    assert (s["median"], s["min"], s["max"], s["fraction_solved"], s["num_seeds"]) == (0.925, 0.2, 1.0, 0.75, 4)
    assert [r["seed"] for r in s["per_seed"]] == [3, 4, 5, 6]
    assert seed_summary(runs[:3], "test_scaled_accuracy")["median"] == 0.95  # odd count: the middle run
    with pytest.raises(ValueError, match="at least one"):
        seed_summary([], "test_scaled_accuracy")
    with pytest.raises(ValueError, match="no 'test_accuracy'"):
        seed_summary(runs, "test_accuracy")


def test_cli_seeds_runs_each_seed_and_aggregates(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["experiment", "formal-language", "--task", "parity", "--model", "lstm", "--steps", "3",
                 "--seed", "7", "--seeds", "3", "--out", str(out), *TINY]) == 0
    per_seed = {s: json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in (7, 8, 9)}
    assert [r["seed"] for r in per_seed.values()] == [7, 8, 9]
    values = sorted(r["test_scaled_accuracy"] for r in per_seed.values())
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["median"] == pytest.approx(values[1]) and summary["min"] == pytest.approx(values[0])
    assert summary["fraction_solved"] == pytest.approx(sum(v >= 0.9 for v in values) / 3)
    table = (out / "seeds.md").read_text()
    assert "| 8 |" in table and "median" in table and "solved (>= 0.9)" in table
    assert "3 seeds: median" in capsys.readouterr().out
    # different seeds are different runs: data and initialisation differ
    assert per_seed[7]["history"][0]["train_loss"] != per_seed[8]["history"][0]["train_loss"]
    # MQAR aggregates its (unscaled) test accuracy the same way
    mq = tmp_path / "m"
    assert main(["experiment", "mqar", "--model", "lstm", "--num-kv-pairs", "2", "--context-length", "16",
                 "--vocab-size", "16", "--steps", "2", "--seeds", "2", "--out", str(mq), *TINY]) == 0
    assert json.loads((mq / "seeds.json").read_text())["metric"] == "test_accuracy"
    assert main(["experiment", "mqar", "--model", "lstm", "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_suite_with_seeds_reports_medians(tmp_path):
    out = tmp_path / "s"
    assert main(["experiment", "suite", "--tasks", "parity", "--models", "lstm", "--steps", "2", "--seeds", "3",
                 "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    values = sorted(r["test_scaled_accuracy"] for r in summary["runs"])
    assert len(values) == 3 and summary["median"] == [[pytest.approx(values[1])]]
    assert (out / "parity" / "lstm" / "seed_2" / "results.json").exists()
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_summary_and_table():
    runs = [{"task": t, "model": m, "seed": s, "test_scaled_accuracy": a, "steps": 1, "wall_time_s": 1.0}
            for t, m, s, a in [("parity", "lstm", 0, 1.0), ("parity", "lstm", 1, 0.5), ("parity", "lstm", 2, 0.95),
                               ("majority", "lstm", 0, 0.1)]]
    g = grid_summary(runs, ["parity", "majority", "bucket_sort"], ["lstm", "transformer"])
    assert g["median"] == [[0.95, 0.1, None], [None, None, None]]
    assert g["cells"][0][0]["fraction_solved"] == pytest.approx(2 / 3) and g["cells"][0][0]["min"] == 0.5
    md = grid_markdown(g)
    assert "| lstm | 0.95 | 0.10 | - |" in md and "0.95 [0.50, 1.00] 2/3" in md and "| transformer | - | - | - |" in md


def test_length_curriculum_grows_the_longest_length_and_stays_in_range():
    cur = fl.LengthCurriculum(start=8, ramp_steps=100)
    assert [cur.max_length(s, 3, 40) for s in (0, 50, 99, 100, 5000)] == [8, 24, 39, 40, 40]
    assert cur.max_length(0, 10, 40) == 10 and fl.LengthCurriculum(50, 10).max_length(0, 3, 40) == 40
    with pytest.raises(ValueError, match="curriculum"):
        fl.LengthCurriculum(0, 10)
    sampler = _CurriculumSampler(fl.get_task("parity"), 64, (3, 40), cur)
    rng, probe = np.random.default_rng(0), np.random.default_rng(1)
    widths = []
    for step in range(120):
        x, y = sampler(rng)
        # the next-token layout drops one position: the longest sequence is x.shape[1] + 1 tokens
        assert 3 <= x.shape[1] + 1 <= cur.max_length(step, 3, 40)
        assert (y != fl.IGNORE).sum() == 64  # one answer per sequence, none cut off
        widths.append(x.shape[1] + 1)
    assert widths[0] <= 8 and max(widths[100:]) == 40
    sampler(probe)  # another Generator (the harness's budget probe) has its own count: training's is unchanged
    assert sampler.drawn[id(rng)] == 120 and sampler.drawn[id(probe)] == 1


def test_formal_language_defaults_are_the_documented_recipe(tmp_path):
    """The defaults docs/experiments.md documents (batch 32, lr 3e-3, 2000 steps, 10 % warm-up, longest training
    length growing from 8 to 40 over the first quarter) reach the run; a few steps of it train xLSTM[0:1]."""
    from flashxlstm.cli.experiment import add_arguments

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    d = parser.parse_args(["formal-language", "--task", "parity", "--model", "xlstm[0:1]", "--out", "x"])
    assert (d.steps, d.batch_size, d.lr, d.warmup_steps, d.curriculum, d.curriculum_start, d.grad_clip,
            d.embedding_dim, d.num_blocks, d.num_heads, d.seeds) == (2000, 32, 3e-3, None, 0.25, 8, 0.0, 64, 2, 1, 1)
    out = tmp_path / "r"
    assert main(["experiment", "formal-language", "--task", "parity", "--model", "xlstm[0:1]", "--steps", "8",
                 "--out", str(out), "--test-size", "4", "--embedding-dim", "8", "--device", "cpu", "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["batch_size"] == 32 and r["curriculum"] == {"start": 8, "ramp_steps": 2}
    assert (r["train_config"]["lr"], r["train_config"]["warmup_steps"]) == (3e-3, 0)
    assert r["train_lengths"] == [3, 40] and r["test_lengths"] == [40, 256]
    off = tmp_path / "off"
    assert main(["experiment", "formal-language", "--task", "parity", "--model", "lstm", "--steps", "2",
                 "--curriculum", "0", "--out", str(off), *TINY]) == 0
    assert json.loads((off / "results.json").read_text())["curriculum"] is None
    assert main(["experiment", "formal-language", "--task", "parity", "--model", "lstm", "--curriculum", "2",
                 "--out", str(tmp_path / "bad")]) == 2


def test_figure4_script_reads_finished_and_cut_off_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "figure4_gpu.py"
    spec = importlib.util.spec_from_file_location("figure4_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    done = tmp_path / "lstm_seed0" / "parity" / "lstm"
    cut = tmp_path / "lstm_seed1" / "parity" / "lstm"
    done.mkdir(parents=True), cut.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"task": "parity", "model": "lstm", "seed": 0, "steps": 9,
                                                   "test_scaled_accuracy": 1.0, "history": [{"step": 9}]}))
    (cut / "results.partial.json").write_text(json.dumps({
        "task": "parity", "model": "lstm", "seed": 1, "random_accuracy": 0.5,
        "history": [{"step": 4, "elapsed_s": 2.0, "test_len_accuracy": 0.75, "train_len_accuracy": 1.0}]}))
    runs = sorted(mod.read_runs(tmp_path, ["parity"]), key=lambda r: r["seed"])
    assert [(r["seed"], r["steps"], r["test_scaled_accuracy"]) for r in runs] == [(0, 9, 1.0), (1, 4, 0.5)]
    assert runs[1]["cut_off"] and grid_summary(runs, ["parity"], ["lstm"])["median"] == [[0.75]]
