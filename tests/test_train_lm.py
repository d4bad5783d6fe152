"""The token-shard trainer's pieces on one process: the chunked cross-entropy equals the plain one (values
and gradients), gradient accumulation and activation checkpointing leave the losses unchanged, bf16 and the
7B family run, and the stream feed carries its state."""
import json

import pytest
import torch
import torch.nn.functional as F

from flashxlstm.data.prepare import prepare
from flashxlstm.training.lm import RunConfig, resume_lm, train_lm
from flashxlstm.training.lm_loss import chunked_cross_entropy

TINY = {"family": "neurips", "embedding_dim": 16, "num_blocks": 2, "slstm_at": "xLSTM[1:1]", "mlstm_num_heads": 2,
        "slstm_num_heads": 2, "mlstm_chunk_size": 8}
TINY_LARGE = {"family": "large", "embedding_dim": 16, "num_blocks": 2, "num_heads": 2, "chunk_size": 8}


@pytest.mark.parametrize("soft_cap", [None, 3.0])
def test_chunked_cross_entropy_matches_the_plain_one(soft_cap):
    torch.manual_seed(0)
    h = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (37,))
    t[[3, 20]] = -100
    got = chunked_cross_entropy(h, w, t, chunk=5, soft_cap=soft_cap)
    gh, gw = torch.autograd.grad(got, (h, w))
    logits = h @ w.T
    if soft_cap is not None:
        logits = soft_cap * torch.tanh(logits / soft_cap)
    want = F.cross_entropy(logits, t, ignore_index=-100, reduction="sum")
    wh, ww = torch.autograd.grad(want, (h, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gh, wh)
    torch.testing.assert_close(gw, ww)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    (root / "c").mkdir()
    for k in range(4):
        (root / "c" / f"{k}.txt").write_text(f"doc {k} " + "a recurrent model reads on. " * (10 + 4 * k))
    prepare([root / "c"], "bytes", root / "data", log=lambda m: None)
    for name, fields in (("neurips", TINY), ("large", TINY_LARGE)):
        (root / f"{name}.json").write_text(json.dumps(fields))
    return root


def _run(root, out, **kw):
    cfg = dict(data=str(root / "data"), out=str(root / out), model=str(root / "neurips.json"), seq_len=16,
               batch_size=4, steps=5, warmup_steps=1, lr=3e-3, eval_every=5, save_every=5, val_fraction=0.1,
               eval_windows=2, progress=False)
    cfg.update(kw)
    return train_lm(RunConfig(**cfg), log=lambda m: None)


def _losses(r):
    return [x["loss"] for x in r["history"]["train"]]


def test_accumulation_and_activation_checkpointing_keep_the_losses(data):
    plain = _losses(_run(data, "plain"))
    accum = _losses(_run(data, "accum", micro_batch_size=1))
    ckpt = _losses(_run(data, "ckpt", activation_checkpointing=True, ce_chunk=7))
    assert max(abs(a - b) for a, b in zip(plain, accum)) < 1e-5
    assert max(abs(a - b) for a, b in zip(plain, ckpt)) < 1e-5  # another summation order in the loss


def test_bf16_large_family_and_stream_feed_run(data):
    from flashxlstm import from_pretrained

    bf16 = _run(data, "bf16", model=str(data / "large.json"), amp="bf16")
    fp32 = _run(data, "fp32", model=str(data / "large.json"))
    assert all(abs(a - b) < 0.05 for a, b in zip(_losses(bf16), _losses(fp32)))  # bf16 rounding only
    stream = _run(data, "stream", feed="stream", steps=6)
    assert len(_losses(stream)) == 6 and stream["history"]["val"][-1]["val_loss"] < 6.0
    rows = [json.loads(line) for line in open(data / "stream" / "metrics.jsonl")]
    logged = [r for r in rows if "loss" in r]
    assert logged and {"tokens_per_s", "lr", "grad_norm"} <= set(logged[0]) and "val_perplexity" in rows[-1]
    for out in ("fp32", "stream"):  # the exported model of each family loads for generation
        model = from_pretrained(data / out / "model")
        ids = torch.randint(0, 256, (1, 5))
        assert torch.isfinite(model(ids)[0]).all()


def test_stream_feed_resumes_exactly_with_another_micro_batch(data):
    """The carried states are checkpointed per rank and regrouped by global row on resume."""
    kw = dict(feed="stream", steps=6, eval_every=3, save_every=3, micro_batch_size=2)
    straight = _losses(_run(data, "s_straight", **kw))
    first = train_lm(RunConfig(**{**dict(data=str(data / "data"), out=str(data / "s_split"),
                                         model=str(data / "neurips.json"), seq_len=16, batch_size=4, warmup_steps=1,
                                         lr=3e-3, val_fraction=0.1, eval_windows=2, progress=False), **kw}),
                     stop_after_step=3, log=lambda m: None)
    assert first["step"] == 3
    resumed = resume_lm(data / "s_split", {"micro_batch_size": 1}, log=lambda m: None)
    assert max(abs(a - b) for a, b in zip(_losses(resumed), straight)) < 1e-5
    assert len(_losses(resumed)) == 6


@pytest.mark.parametrize("fields", [TINY, {**TINY_LARGE, "output_logit_soft_cap": 2.0}], ids=["neurips", "large"])
def test_loss_module_equals_the_models_own_forward(fields):
    """CausalLMLoss (body, then the chunked head and loss; packed rows) == cross-entropy of model(ids) run per
    row, soft cap included."""
    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model

    torch.manual_seed(0)
    f = dict(fields)
    model = build_model(f.pop("family"), {**f, "vocab_size": 19}).double()
    ids, targets = torch.randint(0, 19, (3, 7)), torch.randint(0, 19, (3, 7))
    targets[1, 2] = -100
    loss_sum, count, _ = CausalLMLoss(model, ce_chunk=4)(ids, targets, torch.tensor([0, 7, 10, 14, 21]))
    rows = [model(ids[0:1])[0], model(ids[1:2, :3])[0], model(ids[1:2, 3:])[0], model(ids[2:3])[0]]
    logits = torch.cat([torch.cat(rows[:1]), torch.cat(rows[1:3], dim=1), torch.cat(rows[3:])])
    want = F.cross_entropy(logits.reshape(-1, 19).double(), targets.reshape(-1), ignore_index=-100, reduction="sum")
    assert int(count) == 20
    torch.testing.assert_close(loss_sum, want)


@pytest.mark.parametrize("fields", [TINY, TINY_LARGE], ids=["neurips", "large"])
def test_bf16_autocast_keeps_fp32_master_weights_and_recurrent_states(fields):
    """The cell states (C, n, m; c, n, m, h) stay float32 under bf16 autocast; the causal conv's window caches
    the layer's inputs in their own dtype."""
    from flashxlstm.nn.state import map_state
    from flashxlstm.training.engine import autocast
    from flashxlstm.training.lm_loss import CausalLMLoss
    from flashxlstm.training.presets import build_model

    f = dict(fields)
    model = build_model(f.pop("family"), {**f, "vocab_size": 19})
    ids = torch.randint(0, 19, (2, 9))
    with autocast("cpu", "bf16"):
        loss_sum, _, state = CausalLMLoss(model)(ids, ids, None)
    cells = [block[1:] for block in state] if fields["family"] == "neurips" else list(state)  # not conv windows
    dtypes = set()
    map_state(lambda t: dtypes.add(t.dtype) or t, cells)
    assert dtypes == {torch.float32}, dtypes
    loss_sum.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
               if p.grad is not None)
