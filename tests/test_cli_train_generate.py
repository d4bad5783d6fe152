"""`flashxlstm train` and `flashxlstm generate` end to end (in-process), and their one-line errors."""
import json

import pytest

from flashxlstm.cli.main import main

TINY = ["--d-model", "32", "--blocks", "2", "--heads", "2", "--slstm-heads", "2", "--batch-size", "2",
        "--seq-len", "8", "--warmup-steps", "1", "--threads", "1", "--no-progress"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Hello, xLSTM! Ünïcödé too. " * 40)
    return path


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_train_then_generate(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--text-file", str(text_file), "--steps", "4", "--eval-every", "2",
            "--sample-tokens", "12", "--prompt", "Hel", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "unigram baseline" in printed and "bits per byte" in printed and "sample" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in metrics["val"]] == [2, 4]
    assert (out / "loss_curve.png").exists()

    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--sample-tokens", "0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 6
    capsys.readouterr()

    for ckpt in (out, out / "checkpoint"):  # the run directory or the checkpoint inside it
        argv = ["generate", "--checkpoint", str(ckpt), "--prompt", "Hel", "--max-new-tokens", "10", "--seed", "3"]
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert text.startswith("Hel") and len(text.encode()) >= 3 + 1
    assert main(argv) == 0
    assert capsys.readouterr().out == text  # seeded: the same continuation
    assert main([*argv[:-4], "--temperature", "0", "--max-new-tokens", "5"]) == 0  # greedy


def test_train_errors(tmp_path, capsys):
    out = str(tmp_path / "run")
    _one_line_error(capsys, ["train", "--out", out, "--text-file", str(tmp_path / "missing.txt"), *TINY],
                    "text file not found")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _one_line_error(capsys, ["train", "--out", out, "--text-file", str(empty), *TINY], "text file is empty")
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    _one_line_error(capsys, ["train", "--out", out, "--text-file", str(short), *TINY], "too short")
    _one_line_error(capsys, ["train", "--out", out, "--resume"], "cannot resume", "checkpoint")
    _one_line_error(capsys, ["train", "--out", out, "--steps", "0"], "steps must be a positive integer")
    _one_line_error(capsys, ["train", "--out", out, "--pattern", "xlstm[1:x]", *TINY], "xLSTM[a:b]")
    _one_line_error(capsys, ["train", "--out", out, "--device", "tpu", *TINY], "device")


def test_resume_with_changed_setting_is_refused(tmp_path, text_file, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--text-file", str(text_file), "--steps", "2", "--sample-tokens", "0",
                 *TINY]) == 0
    _one_line_error(capsys, ["train", "--out", out, "--resume", "--lr", "0.5"], "lr=0.5 differs")
    text_file.write_text("Different text now. " * 50)
    _one_line_error(capsys, ["train", "--out", out, "--resume", "--steps", "3"], "not the one the checkpoint")


def test_generate_errors(tmp_path, text_file, capsys):
    _one_line_error(capsys, ["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "a"],
                    "checkpoint directory not found")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--text-file", str(text_file), "--steps", "1", "--sample-tokens", "0",
                 *TINY]) == 0
    ckpt = out / "checkpoint"
    _one_line_error(capsys, ["generate", "--checkpoint", str(ckpt), "--prompt", ""], "prompt is empty")
    _one_line_error(capsys, ["generate", "--checkpoint", str(ckpt), "--prompt", "a", "--top-k", "-1"], "--top-k")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    _one_line_error(capsys, ["generate", "--checkpoint", str(ckpt), "--prompt", "a"], "corrupt model.safetensors")
    (ckpt / "config.json").unlink()
    _one_line_error(capsys, ["generate", "--checkpoint", str(ckpt), "--prompt", "a"], "no config.json")
    (out / "checkpoint" / "training_state.pt").write_bytes(b"garbage")
    _one_line_error(capsys, ["train", "--out", str(out), "--resume"], "corrupt training_state.pt")
