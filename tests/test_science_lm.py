"""benchmarks/science_lm.py end to end on CPU at a tiny size: the three models (NeurIPS xLSTM[7:1], the 7B
family, the transformers Llama) train on the same batches, their evaluations fall on the same token
counts after the same batches (equal digests), and the rows, table and plot are written; --concurrent runs the
models in processes of their own and merges their rows; a model that meets its time cap ends cleanly with its
rows kept."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flashxlstm.data.prepare import prepare

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "science_lm.py"
XLSTM71 = {"preset": "xlstm71-125m", "embedding_dim": 16, "num_blocks": 2, "slstm_at": [1], "mlstm_num_heads": 2,
           "slstm_num_heads": 2, "mlstm_chunk_size": 8}
LARGE = {"preset": "large-125m", "embedding_dim": 16, "num_blocks": 1, "num_heads": 2, "chunk_size": 8}
B, S = 2, 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("science")
    (root / "c").mkdir()
    for k in range(12):
        (root / "c" / f"{k}.txt").write_text(f"doc {k}: " + "an sLSTM gate and an mLSTM memory. " * (3 + 5 * k))
    prepare([root / "c"], "bytes", root / "data", log=lambda m: None)
    (root / "xlstm71_tiny.json").write_text(json.dumps(XLSTM71))
    (root / "large_tiny.json").write_text(json.dumps(LARGE))
    return root


def _args(root, out, models, *extra):
    return ["--data", str(root / "data"), "--models", models, "--llama-like", str(root / "large_tiny.json"),
            "--steps", "4", "--evals", "2", "--batch-size", str(B), "--seq-len", str(S), "--eval-windows", "2",
            "--warmup-steps", "1", "--val-fraction", "0.1", "--device", "cpu", "--out", str(out), *extra]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load():
    spec = importlib.util.spec_from_file_location("science_lm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_three_models_on_equal_tokens(corpus):
    out = corpus / "out"
    models = f"{corpus / 'xlstm71_tiny.json'},{corpus / 'large_tiny.json'},llama"
    assert _load().main(_args(corpus, out, models)) == 0
    names = ["xlstm71_tiny", "large_tiny", "llama"]
    evals = {}
    for name in names:
        rows = _rows(out / f"science_lm.{name}.jsonl")
        start = next(r for r in rows if r["event"] == "start")
        assert start["params"] > 0 and start["feed"] == "windows"
        causal = start["causal_check"]  # changing tokens from t on changes nothing before t, and something after
        assert causal["prefix_max_diff"] == 0 and causal["suffix_max_diff"] > 1e-3
        assert next(r for r in rows if r["event"] == "end")["reason"] == "done"
        evals[name] = [r for r in rows if r["event"] == "eval"]
    assert "sLSTM at [1]" in next(r for r in _rows(out / "science_lm.xlstm71_tiny.jsonl") if r["event"] == "start")[
        "description"]
    # equal-token alignment: the same steps and token counts, after the same batches, for every model
    for name in names:
        assert [(e["step"], e["tokens"]) for e in evals[name]] == [(2, 2 * B * S), (4, 4 * B * S)]
        assert all(e["val_loss"] > 0 and e["val_ppl"] > 1 for e in evals[name])
    for k in range(2):
        assert len({evals[n][k]["data_digest"] for n in names}) == 1
    assert evals["llama"][0]["data_digest"] != evals["llama"][1]["data_digest"]
    merged = _rows(out / "science_lm.jsonl")
    assert sum(r.get("event") == "eval" for r in merged) == 6
    table = (out / "science_lm.md").read_text()
    assert "| 4 | 128 |" in table and table.count("| yes |") == 2
    assert "At 128 tokens, the last point every model reached" in table and "identical for every model" in table
    assert (out / "science_lm.png").read_bytes()[:4] == b"\x89PNG"


def test_concurrent_processes_write_one_report(corpus):
    """--concurrent: one child process per model, started together; the parent merges their rows."""
    out = corpus / "concurrent"
    run = subprocess.run([sys.executable, str(SCRIPT), *_args(corpus, out, f"{corpus / 'large_tiny.json'},llama",
                                                              "--concurrent")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for name in ("large_tiny", "llama"):
        assert "exit 0" in run.stdout and (out / f"science_lm.{name}.log").is_file()
        assert [r["event"] for r in _rows(out / f"science_lm.{name}.jsonl")] == [
            "header", "start", "eval", "eval", "end"]
    table = (out / "science_lm.md").read_text()
    assert "one process per model, started together" in table and table.count("| yes |") == 2
    assert (out / "science_lm.png").is_file()


def test_a_time_cap_ends_the_model_cleanly_with_its_rows(corpus, tmp_path):
    out = tmp_path / "capped"
    assert _load().main(_args(corpus, out, str(corpus / "large_tiny.json"), "--time-cap-s", "0.001")) == 0
    rows = _rows(out / "science_lm.large_tiny.jsonl")
    assert [r["event"] for r in rows] == ["header", "start", "end"]
    assert rows[1]["causal_check"]["prefix_max_diff"] == 0
    assert rows[-1]["reason"] == "time limit" and rows[-1]["steps"] == 1
    table = (out / "science_lm.md").read_text()
    assert "| time limit |" in table and "No token count was reached by every model yet." in table


def test_steps_must_be_a_multiple_of_the_evaluations(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _load().main(_args(corpus, tmp_path / "o", "llama", "--steps", "5"))
    assert "multiple of --evals" in capsys.readouterr().err
