"""`flashxlstm train` never loses user data and fails with one-line messages (issue 12's cases)."""
import os
import subprocess
import sys

import pytest
import torch

from flashxlstm.checkpoints import native
from flashxlstm.cli.main import main
from flashxlstm.data import bytes as byte_data

TINY = ["--d-model", "16", "--blocks", "2", "--heads", "2", "--slstm-heads", "2", "--batch-size", "2",
        "--seq-len", "8", "--warmup-steps", "1", "--threads", "1", "--no-progress", "--sample-tokens", "0",
        "--eval-every", "2"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Hello, xLSTM! " * 60)
    return path


def _train(out, text_file, *extra, steps=2):
    return main(["train", "--out", str(out), "--text-file", str(text_file), "--steps", str(steps), *TINY, *extra])


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _saved_step(out):
    state, _ = native.load_training_state(out / "checkpoint")
    return state["step"]


def test_non_empty_out_is_refused_and_foreign_files_survive(tmp_path, text_file, capsys):
    unrelated = tmp_path / "u"
    (unrelated / "checkpoint").mkdir(parents=True)
    (unrelated / "checkpoint" / "thesis.tex").write_text("x")
    (unrelated / "metrics.json").write_text("mine")
    assert _train(unrelated, text_file) == 2
    _one_line_error(capsys, "not empty", "--resume", "--overwrite")
    assert _train(unrelated, text_file, "--overwrite") == 2  # --overwrite never deletes what no run wrote
    _one_line_error(capsys, "did not write", "checkpoint/thesis.tex")
    assert (unrelated / "checkpoint" / "thesis.tex").read_text() == "x"
    assert (unrelated / "metrics.json").read_text() == "mine"
    assert sorted(p.name for p in unrelated.iterdir()) == ["checkpoint", "metrics.json"]


def test_an_earlier_run_is_kept_unless_overwrite(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert _train(run, text_file, steps=4) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert _train(run, text_file, steps=2) == 2
    _one_line_error(capsys, "not empty")
    assert _saved_step(run) == 4 and {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert _train(run, text_file, "--resume", "--overwrite") == 2
    _one_line_error(capsys, "one of them")
    assert _train(run, text_file, "--overwrite", steps=2) == 0
    assert _saved_step(run) == 2


def test_save_killed_between_renames_is_recovered_by_every_reader(tmp_path, text_file, capsys):
    from flashxlstm import from_pretrained

    run = tmp_path / "run"
    assert _train(run, text_file, steps=2) == 0
    os.replace(run / "checkpoint", run / ".checkpoint.old")  # the state a kill between the two renames leaves
    with pytest.warns(UserWarning, match="interrupted save"):
        model = from_pretrained(run / "checkpoint")
    assert model.config.vocab_size == 256 and (run / "checkpoint").is_dir()
    for reader in ("generate-run", "generate-ckpt", "resume"):
        os.replace(run / "checkpoint", run / ".checkpoint.old")
        with pytest.warns(UserWarning, match="interrupted save"):
            if reader == "resume":
                assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--sample-tokens", "0",
                             "--no-progress"]) == 0
            else:
                ckpt = run if reader == "generate-run" else run / "checkpoint"
                assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "He", "--max-new-tokens", "3"]) == 0
        assert (run / "checkpoint").is_dir() and not (run / ".checkpoint.old").exists()
    assert _saved_step(run) == 4


def test_orphan_temp_directories_of_dead_saves_are_removed(tmp_path, text_file):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    run = tmp_path / "run"
    assert _train(run, text_file, steps=2) == 0
    orphan, live, other = (run / f".checkpoint.tmp-{dead}", run / f".checkpoint.tmp-{os.getppid()}",
                           run / ".checkpoint.tmp-notapid")
    for d in (orphan, live, other):
        d.mkdir()
        (d / "model.safetensors").write_text("half")
    stray_file = run / f".metrics.json.tmp-{dead}"
    stray_file.write_text("half")
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--sample-tokens", "0", "--no-progress"]) == 0
    assert not orphan.exists() and not stray_file.exists()
    assert live.is_dir() and other.is_dir()  # a live process's save and names that are not ours stay


def test_endless_or_huge_text_file_is_refused_without_reading_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(byte_data, "MAX_TEXT_BYTES", 1 << 20)
    assert main(["train", "--out", str(tmp_path / "z"), "--text-file", "/dev/zero", *TINY]) == 2
    _one_line_error(capsys, "larger than 1,048,576 bytes", "/dev/zero", "flashxlstm prepare")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate((1 << 20) + 1)  # sparse: the size check refuses it before any read
    assert main(["train", "--out", str(tmp_path / "b"), "--text-file", str(big), *TINY]) == 2
    _one_line_error(capsys, "larger than")
    assert not (tmp_path / "z").exists() and not (tmp_path / "b").exists()


def test_disk_full_during_a_save_is_a_message_and_keeps_the_previous_checkpoint(tmp_path, text_file, monkeypatch,
                                                                                capsys):
    run = tmp_path / "run"
    assert _train(run, text_file, steps=2) == 0

    def full_disk(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(native.torch, "save", full_disk)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--sample-tokens", "0", "--no-progress"]) == 2
    _one_line_error(capsys, "could not write", "disk is full", "checkpoint")
    monkeypatch.undo()
    assert _saved_step(run) == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "loss_curve.png", "metrics.json"]


def test_bad_out_device_and_prompt_fail_before_training(tmp_path, text_file, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    assert _train(a_file, text_file) == 2
    _one_line_error(capsys, "is a file")
    assert a_file.read_text() == "keep"
    assert main(["train", "--out", str(a_file), "--resume"]) == 2
    _one_line_error(capsys, "is a file")
    assert _train(tmp_path / "m", text_file, "--device", "meta") == 2
    _one_line_error(capsys, "'meta'", "expected auto, cpu")
    assert _train(tmp_path / "p", text_file, "--prompt", "", "--sample-tokens", "5") == 2
    _one_line_error(capsys, "prompt", "empty")
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def test_overwrite_checks_every_folder_a_run_writes(tmp_path):
    from flashxlstm.training.loop import check_run_directory

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "checkpoint").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (run / "model" / name).write_text("{}")
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp", "trainer.json", "run_config.json"):
        (run / "checkpoint" / name).write_text("x")
    (run / "metrics.jsonl").write_text("{}\n")
    check_run_directory(run, overwrite=True)  # an earlier token-shard run: fine to replace
    (run / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="model/notes.txt"):
        check_run_directory(run, overwrite=True)
