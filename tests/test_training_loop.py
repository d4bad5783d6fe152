"""The training loop: schedule, exact resume, learning on a tiny text, and resume-time checks."""
import math

import pytest

from flashxlstm.data import split_bytes
from flashxlstm.data.bytes import ByteSplit
from flashxlstm.training.config import TrainConfig
from flashxlstm.training.loop import merge_resume_config, resume_training, train
from flashxlstm.training.model_factory import build_model
from flashxlstm.training.schedule import warmup_cosine_lr

TEXT = b"the quick brown fox jumps over the lazy dog. " * 60


def tiny(**kw) -> TrainConfig:
    cfg = dict(embedding_dim=32, num_blocks=2, num_heads=2, slstm_num_heads=2, batch_size=2, seq_len=8,
               steps=6, warmup_steps=2, eval_every=3, eval_batch_size=4, sample_tokens=0, progress=False,
               threads=1, lr=3e-3, min_lr=3e-4)
    cfg.update(kw)
    return TrainConfig(**cfg)


def corpus(text=TEXT) -> ByteSplit:
    train_bytes, val_bytes = split_bytes(text, 0.1)
    return ByteSplit(train=train_bytes, val=val_bytes, source="test")


def quiet(_msg):
    pass


def test_warmup_cosine_schedule():
    kw = dict(lr=1.0, warmup_steps=4, total_steps=14, min_lr=0.1)
    lrs = [warmup_cosine_lr(s, **kw) for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[13] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 9)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_optimizer_uses_the_papers_decay_groups():
    model = build_model(tiny())
    opt = tiny(lr=1e-3, weight_decay=0.1).optimizer(model)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is model.token_embedding.weight for p in no_decay["params"])
    assert any(p is model.lm_head.weight for p in decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_resume_is_exact(tmp_path):
    straight = train(tiny(), tmp_path / "a", log=quiet, corpus=corpus())
    first = train(tiny(), tmp_path / "b", stop_after_step=3, log=quiet, corpus=corpus())
    assert first.step == 3
    resumed = resume_training(tmp_path / "b", log=quiet, corpus=corpus())
    assert resumed.step == 6
    losses = lambda r: [rec["loss"] for rec in r.history["train"]]
    assert losses(resumed) == losses(straight)  # bitwise: same data, optimiser, RNG and carried state
    assert resumed.val_loss == straight.val_loss
    with pytest.raises(ValueError, match="already trained 6 of 6 steps"):
        resume_training(tmp_path / "b", log=quiet, corpus=corpus())
    longer = resume_training(tmp_path / "b", {"steps": 8}, log=quiet, corpus=corpus())
    assert longer.step == 8 and len(longer.history["train"]) == 8


def test_ctrl_c_saves_a_checkpoint_after_the_current_step(tmp_path, monkeypatch):
    import signal

    from flashxlstm.training import loop

    real = loop.warmup_cosine_lr

    def lr_then_ctrl_c(step, **kw):
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 2
        return real(step, **kw)

    monkeypatch.setattr(loop, "warmup_cosine_lr", lr_then_ctrl_c)
    stopped = train(tiny(), tmp_path / "run", log=quiet, corpus=corpus())
    assert stopped.interrupted and stopped.step == 2 and stopped.sample is None
    monkeypatch.setattr(loop, "warmup_cosine_lr", real)
    straight = train(tiny(), tmp_path / "straight", log=quiet, corpus=corpus())
    resumed = resume_training(tmp_path / "run", log=quiet, corpus=corpus())
    assert [r["loss"] for r in resumed.history["train"]] == [r["loss"] for r in straight.history["train"]]


def test_time_limit_stops_with_a_resumable_checkpoint(tmp_path):
    messages = []
    cut = train(tiny(max_minutes=1e-9), tmp_path / "run", log=messages.append, corpus=corpus())
    assert cut.step == 1 and not cut.interrupted
    assert any("continue with --resume" in m for m in messages)
    assert resume_training(tmp_path / "run", {"max_minutes": 0}, log=quiet, corpus=corpus()).step == 6


def test_resume_rejects_changed_settings(tmp_path):
    saved = tiny()
    assert merge_resume_config(saved, {"steps": 9, "device": "cpu"}).steps == 9
    with pytest.raises(ValueError, match="--resume: lr=0.1 differs"):
        merge_resume_config(saved, {"lr": 0.1})
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint"):
        resume_training(tmp_path / "never-trained", log=quiet)


def test_learns_a_repetitive_text(tmp_path):
    result = train(tiny(steps=40, eval_every=40, lr=1e-2, min_lr=1e-3), tmp_path / "run", log=quiet,
                   corpus=corpus())
    assert result.val_bpb < result.unigram_bpb - 1.0  # context helps a lot on a repeated sentence
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").exists()


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        tiny(seq_len=0).validated()
    with pytest.raises(ValueError, match="min_lr"):
        tiny(min_lr=1.0).validated()
    with pytest.raises(ValueError, match="inconsistent model settings"):
        build_model(tiny(embedding_dim=30, slstm_num_heads=4))
