"""xLSTMLarge on its own: the 7B shape table, config names, intended init, the stateful interface,
padding masks that leave the state untouched, and clear errors."""
import dataclasses

import pytest
import torch

from flashxlstm import xLSTMLarge, xLSTMLargeConfig

TINY = dict(embedding_dim=48, num_heads=4, num_blocks=2, vocab_size=61, chunk_size=8)


def perturbed(gen, **overrides):
    model = xLSTMLarge(xLSTMLargeConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


SPEC_7B_BLOCK = {  # docs/models.md, weight_mode "single"
    "norm_mlstm.weight": (4096,),
    "mlstm_layer.q.weight": (2048, 4096),
    "mlstm_layer.k.weight": (2048, 4096),
    "mlstm_layer.v.weight": (4096, 4096),
    "mlstm_layer.ogate_preact.weight": (4096, 4096),
    "mlstm_layer.igate_preact.weight": (8, 4096),
    "mlstm_layer.igate_preact.bias": (8,),
    "mlstm_layer.fgate_preact.weight": (8, 4096),
    "mlstm_layer.fgate_preact.bias": (8,),
    "mlstm_layer.multihead_norm.weight": (4096,),
    "mlstm_layer.out_proj.weight": (4096, 4096),
    "norm_ffn.weight": (4096,),
    "ffn.proj_up_gate.weight": (10944, 4096),
    "ffn.proj_up.weight": (10944, 4096),
    "ffn.proj_down.weight": (4096, 10944),
}


def test_7b_on_meta_has_the_exact_parameter_count_and_key_table():
    with torch.device("meta"):
        model = xLSTMLarge(xLSTMLargeConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"backbone.embeddings.weight": (50304, 4096), "backbone.out_norm.weight": (4096,),
                "lm_head.weight": (50304, 4096)}
    for i in range(32):
        expected.update({f"backbone.blocks.{i}.{k}": s for k, s in SPEC_7B_BLOCK.items()})
    assert shapes == expected
    assert model.num_parameters() == 6_865_424_896
    with torch.device("meta"):
        fused = xLSTMLarge(xLSTMLargeConfig(weight_mode="fused"))
    assert fused.num_parameters() == 6_865_424_896
    fshapes = {k: tuple(v.shape) for k, v in fused.state_dict().items() if k.startswith("backbone.blocks.0.")}
    assert fshapes["backbone.blocks.0.mlstm_layer.qkv_opreact.weight"] == (12288, 4096)
    assert fshapes["backbone.blocks.0.mlstm_layer.ifgate_preact.bias"] == (16,)
    assert fshapes["backbone.blocks.0.ffn.proj_up_gate_z.weight"] == (21888, 4096)


def test_config_reads_nxai_and_transformers_names_and_ignores_legacy_fields():
    cfg = xLSTMLargeConfig.from_dict({"hidden_size": 96, "num_hidden_layers": 3, "num_heads": 4, "vocab_size": 10,
                                      "forward_backend_name": "chunkwise--triton", "step_kernel": "triton",
                                      "mode": "inference", "eos_token_id": [2]})
    assert (cfg.embedding_dim, cfg.num_blocks, cfg.eos_token_id) == (96, 3, 2)
    assert xLSTMLargeConfig.from_dict(cfg.to_dict()) == cfg
    official_defaults = dict(use_bias=False, norm_eps=1e-6, add_out_norm=True, qk_dim_factor=0.5, v_dim_factor=1.0,
                             chunk_size=64, eps=1e-6, ffn_proj_factor=2.6667, ffn_round_up_to_multiple_of=64,
                             gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="single")
    defaults = xLSTMLargeConfig()
    assert {k: getattr(defaults, k) for k in official_defaults} == official_defaults
    assert xLSTMLargeConfig(embedding_dim=768).ffn_hidden_dim == 2048  # the float round-up of the spec
    with pytest.raises(ValueError, match="disagrees"):
        xLSTMLargeConfig.from_dict({"embedding_dim": 64, "hidden_size": 96})
    with pytest.raises(ValueError, match="weight_mode"):
        xLSTMLargeConfig(weight_mode="packed")


def test_intended_init():
    torch.manual_seed(0)
    model = xLSTMLarge(xLSTMLargeConfig(**TINY))
    layer = model.backbone.blocks[1].mlstm_layer
    assert torch.all(layer.igate_preact.weight == 0) and torch.all(layer.igate_preact.bias == -10)
    assert torch.allclose(layer.fgate_preact.bias, torch.linspace(3, 6, 4))
    assert torch.all(layer.multihead_norm.weight == 1) and torch.all(model.backbone.out_norm.weight == 1)
    std = model.backbone.blocks[0].mlstm_layer.q.weight.std().item()
    assert abs(std - (2 / (5 * 48)) ** 0.5) < 0.02
    fused = xLSTMLarge(xLSTMLargeConfig(**TINY, weight_mode="fused")).backbone.blocks[0].mlstm_layer
    assert torch.allclose(fused.ifgate_preact.bias, torch.cat([torch.full((4,), -10.0), torch.linspace(3, 6, 4)]))


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_any_length_in_pieces_equals_whole_and_state_is_fp32_and_untouched(gen, weight_mode):
    model = perturbed(gen, weight_mode=weight_mode).to(torch.float64)
    ids = torch.randint(0, 61, (2, 21), generator=gen)
    whole, state = model(ids)
    a, sa = model(ids[:, :5])
    frozen = [t.clone() for blk in sa for t in blk]
    b, sb = model(ids[:, 5:6], sa)  # one token: the step form
    c, sc = model(ids[:, 6:], sb)  # 15 tokens: not a multiple of the chunk size 8
    assert rel(torch.cat([a, b, c], 1), whole) < 1e-10
    for x, y in zip(sc, state):
        for s, t in zip(x, y):
            assert rel(s, t) < 1e-10
    assert all(torch.equal(s, t) for s, t in zip(frozen, [t for blk in sa for t in blk]))
    bf = perturbed(gen).to(torch.bfloat16)
    _, st = bf(ids[:, :9])
    assert all(t.dtype == torch.float32 for blk in st for t in blk)
    assert st[0][2].shape == (2, 4)


def test_padded_positions_do_not_touch_the_state(gen):
    model = perturbed(gen)
    ids = torch.randint(0, 61, (1, 11), generator=gen)
    alone, st_alone = model(ids)
    padded = torch.cat([torch.randint(0, 61, (1, 6), generator=gen), ids], 1)
    mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 11)], 1).long()
    logits, st = model(padded, attention_mask=mask)
    assert rel(logits[:, 6:], alone) < 1e-5
    for x, y in zip(st, st_alone):
        for s, t in zip(x, y):
            assert rel(s, t) < 1e-5
    # a masked single step (the decode form) leaves the state as it was
    _, st2 = model(ids[:, :1], st, attention_mask=torch.zeros(1, 1))
    assert all(torch.equal(s, t) for x, y in zip(st2, st) for s, t in zip(x, y))


def test_logits_to_keep_and_errors(gen):
    model = perturbed(gen)
    ids = torch.randint(0, 61, (2, 9), generator=gen)
    full, _ = model(ids)
    last, _ = model(ids, logits_to_keep=1)
    assert last.shape == (2, 1, 61) and torch.allclose(last, full[:, -1:], atol=1e-5)
    assert full.dtype == torch.float32 and full.abs().max() <= 30
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="state"):
        model(ids, state=((None,),))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        xLSTMLarge(xLSTMLargeConfig(**{**TINY, "num_heads": 5}))
    assert dataclasses.replace(model.config, weight_mode="fused").weight_mode == "fused"


def test_state_out_receives_the_new_state_and_leaves_the_input_alone(gen):
    model = perturbed(gen)
    ids = torch.randint(0, 61, (2, 7), generator=gen)
    _, state = model(ids[:, :6])
    frozen = [t.clone() for blk in state for t in blk]
    out = tuple(tuple(torch.full_like(t, float("nan")) for t in blk) for blk in state)
    logits, new = model(ids[:, 6:], state, state_out=out)
    ref_logits, ref = model(ids[:, 6:], state)
    assert torch.equal(logits, ref_logits)
    assert all(n is o and torch.equal(n, r) for nb, ob, rb in zip(new, out, ref) for n, o, r in zip(nb, ob, rb))
    assert all(torch.equal(a, b) for a, b in zip(frozen, [t for blk in state for t in blk]))
    with pytest.raises(ValueError, match="state_out"):
        model(ids, state, state_out=out)
