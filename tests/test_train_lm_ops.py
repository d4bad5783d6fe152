"""The token-shard trainer in operation: a run killed with SIGKILL after a checkpoint resumes with the losses of
an uninterrupted run (and its metrics file keeps no step twice); TensorBoard event files hold the logged
metrics; `prepare --hf-dataset` reads a Hugging Face dataset saved on disk and local data files (offline);
`--compile` of the NeurIPS family (sLSTM custom ops included) trains with the eager losses (aot_eager: the traced
graphs without inductor's code generation, which is slow on a small CPU)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from flashxlstm.checkpoints.atomic import resolve_directory
from flashxlstm.data.prepare import prepare
from flashxlstm.training.lm import RUN_CONFIG, RunConfig, resume_lm, train_lm

TINY = {"family": "neurips", "embedding_dim": 16, "num_blocks": 2, "slstm_at": "xLSTM[1:1]", "mlstm_num_heads": 2,
        "slstm_num_heads": 2, "mlstm_chunk_size": 8}
SETTINGS = dict(seq_len=16, batch_size=4, steps=400, warmup_steps=2, lr=3e-3, eval_every=400, save_every=2,
                log_every=1, val_fraction=0.1, eval_windows=2, threads=1, progress=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmops")
    (root / "c").mkdir()
    for k in range(5):
        (root / "c" / f"{k}.txt").write_text(f"doc {k}: " + "a recurrent model reads on and on. " * (8 + 3 * k))
    prepare([root / "c"], "bytes", root / "data", log=lambda m: None)
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


def _config(root, out, **kw):
    return RunConfig(data=str(root / "data"), out=str(root / out), model=str(root / "tiny.json"), **{**SETTINGS, **kw})


def _losses(result):
    return [r["loss"] for r in result["history"]["train"]]


def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_losses(root):
    out = root / "killed"
    cmd = [sys.executable, "-m", "flashxlstm", "train", "--data", str(root / "data"), "--model", str(root / "tiny.json"),
           "--out", str(out), "--no-progress"]
    for name, value in SETTINGS.items():
        if name != "progress":
            cmd += ["--" + name.replace("_", "-"), str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (resolve_directory(out / "checkpoint") / RUN_CONFIG).is_file():
            assert proc.poll() is None, f"the training process ended before a checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    logged = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if line.strip()]

    end = 14
    # fewer checkpoints from here on (how often a run saves does not change its losses)
    resumed = resume_lm(out, {"save_every": 400}, stop_after_step=end, log=lambda m: None)
    reference = train_lm(_config(root, "reference", save_every=400), stop_after_step=end, log=lambda m: None)
    assert resumed["step"] == reference["step"] == end
    assert _losses(resumed) == pytest.approx(_losses(reference), abs=1e-6, rel=0)
    assert resumed["history"]["val"][-1]["val_loss"] == pytest.approx(reference["history"]["val"][-1]["val_loss"],
                                                                      abs=1e-6)
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if "loss" in line and "val" not in line]
    assert steps == list(range(1, end + 1)), (logged, steps)  # the killed run's steps past its checkpoint: dropped


def test_tensorboard_event_file_holds_the_logged_metrics(root):
    pytest.importorskip("tensorboard", reason="the tensorboard extra")  # installed by make test (extra 'test')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train_lm(_config(root, "tb", steps=4, eval_every=4, save_every=4, tensorboard=True), log=lambda m: None)
    acc = EventAccumulator(str(root / "tb" / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx(_losses(result), rel=1e-6)
    assert [e.step for e in acc.Scalars("val_perplexity")] == [4]
    assert {"lr", "tokens_per_s", "grad_norm", "val_loss"} <= set(acc.Tags()["scalars"])


def test_tensorboard_missing_is_a_clear_error(root, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ModuleNotFoundError("No module named 'tensorboard'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        train_lm(_config(root, "notb", steps=2, tensorboard=True), log=lambda m: None)


def test_prepare_reads_a_saved_hf_dataset_and_local_data_files(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets extra")
    from flashxlstm.data.shards import TokenData

    texts = ["first document, with unicode: \u00e9\u00e8", "", "second one", "a third and last document"]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": texts, "n": [1, 2, 3, 4]}),
                                   "test": datasets.Dataset.from_dict({"body": ["held out"], "n": [0]})})
    splits.save_to_disk(str(tmp_path / "saved"))
    meta = prepare([], "bytes", tmp_path / "d1", hf_dataset=str(tmp_path / "saved"), hf_field="body",
                   log=lambda m: None)
    data = TokenData(tmp_path / "d1")
    want = [t for t in texts if t]
    assert meta["num_documents"] == 3 and meta["hf_dataset"]["split"] == "train"
    starts = [int(x) for x in data.doc_starts] + [data.num_tokens]
    assert [data.decode(data.read(a, b)) for a, b in zip(starts, starts[1:])] == want

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["alpha beta", "gamma"]))
    (tmp_path / "file.txt").write_text("a plain file first")
    meta = prepare([tmp_path / "file.txt"], "bytes", tmp_path / "d2", hf_dataset=f"json:{tmp_path / 'rows.jsonl'}",
                   log=lambda m: None)
    data = TokenData(tmp_path / "d2")
    assert meta["num_documents"] == 3
    assert data.decode(data.read(0, data.num_tokens)) == "a plain file firstalpha betagamma"

    with pytest.raises(ValueError, match="no string field 'text'"):
        prepare([], "bytes", tmp_path / "d3", hf_dataset=str(tmp_path / "saved"), log=lambda m: None)
    with pytest.raises(ValueError, match="no split 'validation'"):
        prepare([], "bytes", tmp_path / "d4", hf_dataset=str(tmp_path / "saved"), hf_split="validation",
                hf_field="body", log=lambda m: None)


def test_compile_trains_the_neurips_family_with_the_eager_losses(root):
    settings = dict(steps=3, eval_every=3, save_every=3, seq_len=16)
    eager = train_lm(_config(root, "eager", **settings), log=lambda m: None)
    compiled = train_lm(_config(root, "compiled", compile=True, compile_backend="aot_eager", **settings),
                        log=lambda m: None)
    assert _losses(compiled) == pytest.approx(_losses(eager), abs=1e-5)
    with pytest.raises(ValueError, match="not a torch.compile backend"):
        _config(root, "bad", compile=True, compile_backend="no-such-backend").validated()
