"""The vision training / inference steps (tasks/vision_step.py) against a plain eager reference, regional
torch.compile of the vision blocks against eager (outputs and gradients), the lockstep ViL/ViT run's schedule
and its kill-safe record. The CUDA-graph path is checked on the GPU by the benchmarks (a replay against an
eager step, printed with the results): CI has no GPU."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from flashxlstm.models.vision import ViL, ViLConfig
from flashxlstm.tasks.vision_pair import PairConfig, train_pair
from flashxlstm.tasks.vision_step import InferStep, TrainStep, compile_blocks
from flashxlstm.tasks.vision_augment import AugmentConfig
from flashxlstm.training.schedule import decay_groups
from flashxlstm.training.settings import LoopSettings


def _tiny_vil(**kw):
    torch.manual_seed(0)
    return ViL(ViLConfig(image_size=8, patch_size=2, dim=16, depth=2, num_heads=2, backend="chunkwise", **kw))


def test_train_step_matches_reference():
    model = _tiny_vil()
    ref = copy.deepcopy(model)
    step = TrainStep(model, lr=1e-2, weight_decay=0.1, grad_clip=0.05, label_smoothing=0.1, ema_decay=0.9)
    opt = torch.optim.AdamW(decay_groups(ref, 0.1), lr=1e-2, weight_decay=0.1)
    ema = [p.detach().clone() for p in ref.parameters()]
    g = torch.Generator().manual_seed(1)
    for n, lr in enumerate((1e-2, 5e-3, 2e-3), start=1):
        x, y = torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 10, (5,), generator=g)
        loss = step(x, y, lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y, label_smoothing=0.1)
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        opt.step()
        d = min(0.9, (1 + n) / (10 + n))
        ema = [d * e + (1 - d) * p.detach() for e, p in zip(ema, ref.parameters())]
        torch.testing.assert_close(loss, ref_loss.detach())
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    for e, q in zip(step.ema.parameters(), ema):
        torch.testing.assert_close(e, q)
    logits = InferStep(model)(x)
    assert model.training and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref.eval()(x))


def test_step_bad_arguments():
    model = _tiny_vil()
    with pytest.raises(ValueError, match="CUDA"):
        TrainStep(model, lr=1e-3, graph=True)
    with pytest.raises(ValueError, match="CUDA"):
        InferStep(model, graph=True)
    with pytest.raises(ValueError, match="amp"):
        TrainStep(model, lr=1e-3, amp="fp8")
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainStep(model, lr=1e-3, label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="nothing captured"):
        TrainStep(model, lr=1e-3).check_graph(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), 1e-3)
    with pytest.raises(ValueError, match="blocks"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_compiled_vil_blocks_equal_eager():
    torch._dynamo.reset()
    eager = _tiny_vil().double()
    compiled = compile_blocks(copy.deepcopy(eager), "aot_eager", fullgraph=True)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    outs = []
    for m in (eager, compiled):
        logits = m(x)
        F.cross_entropy(logits, y).backward()
        outs.append((logits.detach(), [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b)


def test_pair_config_is_loop_settings():
    """Run length and schedule are LoopSettings' (steps the cap, time_budget_s the time box, whichever is
    nearer its end drives the cosine); the config round-trips through JSON and names a bad setting."""
    cfg = PairConfig(steps=100, time_budget_s=50.0, warmup_steps=10, lr=1.0, device="cpu")
    assert isinstance(cfg, LoopSettings)
    assert cfg.progress(50, 10.0) == pytest.approx(0.5) and cfg.progress(10, 40.0) == pytest.approx(0.8)
    assert PairConfig(steps=100, time_budget_s=None).progress(99, 1e9) == pytest.approx(0.99)
    assert cfg.lr_at(0, 0.0) == pytest.approx(0.1) and cfg.lr_at(4, 0.0) == pytest.approx(0.5)
    assert cfg.lr_at(20, 0.5) == pytest.approx(0.5) and cfg.lr_at(99, 1.0) == pytest.approx(0.0, abs=1e-12)
    back = PairConfig.from_dict(json.loads(json.dumps(
        PairConfig(augment=AugmentConfig(pad=1, hflip=0.5), chunk_size=7).to_dict())))
    assert back.augment == AugmentConfig(pad=1, hflip=0.5) and back.chunk_size == 7 and back.betas == (0.9, 0.999)
    for bad, match in ((dict(steps=0), "steps"), (dict(time_budget_s=0.0), "time_budget_s"),
                       (dict(dataset="cifar"), "dataset"), (dict(label_smoothing=1.0), "label_smoothing"),
                       (dict(train_eval_size=-1), "train_eval_size"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=match):
            PairConfig(**bad)
    with pytest.raises(ValueError, match="unknown training setting"):
        PairConfig.from_dict({"train_s": 60.0})


def test_pair_run_lockstep_record(tmp_path):
    cfg = PairConfig(dataset="digits", device="cpu", batch_size=16, eval_batch_size=100, dim=16, depth=2,
                     patch_size=2, num_heads=2, steps=3, time_budget_s=60.0, eval_every=1, warmup_steps=1,
                     train_eval_size=150, time_every=1)
    res = train_pair(tmp_path, cfg, log=lambda s: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["partial"] is False and saved["steps"] == 3 == res["steps"]
    # an evaluation after every step (eval_every 1), each rewriting the record, plus the final one
    assert [h["step"] for h in saved["history"]] == [1, 2, 3, 3]
    last = saved["history"][-1]
    assert set(last["test_accuracy"]) == {"vil", "vil_ema", "vit", "vit_ema"}
    assert set(last["train_clean"]) == {"vil", "vit"}
    assert "test_flip_tta" not in last  # digits are not flipped in training, so not at test time either
    assert all(0.0 <= v <= 1.0 for d in (last["test_accuracy"], last["train_clean"]) for v in d.values())
    # steps 0..9 are never timed (warm-up / capture); with 3 steps nothing is: no device time claimed
    assert saved["device_ms_per_step"] == {"vil": None, "vit": None}
    assert saved["model_config"]["vil"]["chunk_size"] == 16  # 8x8 digits at patch 2: one chunk of all 16 tokens
    assert "| vil |" in (tmp_path / "results.md").read_text()


def test_flip_tta_accuracy_is_the_mean_of_both_views():
    """The flip test-time augmentation adds the logits of each image and its mirror before the argmax."""
    from flashxlstm.tasks.vision_pair import _accuracy
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([1.0, 0.0, 3.0, 0.0])  # left pixel
    x[:, 0, 0, 1] = torch.tensor([0.0, 2.0, 0.0, 5.0])  # right pixel
    infer = lambda b: torch.stack([b[:, 0, 0, 0] * 2, b[:, 0, 0, 1]], dim=1)  # class 0: 2 x left; class 1: right
    y = torch.tensor([0, 1, 0, 1])
    # plain: logits [2, 0], [0, 2], [6, 0], [0, 5] -> all right; flipped views add [0, 1], [4, 0], [0, 3], [10, 0]
    assert _accuracy(infer, [(x, y)]) == 1.0
    assert _accuracy(infer, [(x, y)], flip=True) == 0.5  # sums [2, 1], [4, 2], [6, 3], [10, 5]: class 0 each


def test_step_timer_on_cpu():
    from flashxlstm.tasks.vision_pair import StepTimer
    timer = StepTimer(torch.device("cpu"))
    assert timer.mean_ms() is None  # nothing timed: no number
    for _ in range(2):
        started = timer.start()
        torch.randn(64, 64) @ torch.randn(64, 64)
        timer.stop(started)
    assert len(timer.ms) == 2 and timer.mean_ms() > 0
