"""The one strict loader (flashxlstm.checkpoints.strict) under broken checkpoints: every place filled once
(a duplicate cannot stand in for a missing tensor, in single or fused models), no silent casts of integer
tensors into float weights, and no shard outside the checkpoint directory."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashxlstm import from_pretrained, from_official, xLSTMLarge, xLSTMLargeConfig, xLSTMLM, xLSTMLMConfig

K0 = "backbone.blocks.0.mlstm_layer.k.weight"
Q0 = "backbone.blocks.0.mlstm_layer.q.weight"


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = xLSTMLarge(xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=29)).eval()
    model.save_pretrained(tmp_path / "ckpt", for_transformers=False)
    return tmp_path / "ckpt"


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_a_duplicate_does_not_stand_in_for_a_missing_tensor(saved, weight_mode):
    weights = load_file(saved / "model.safetensors")
    k = weights.pop(K0)
    weights[Q0.replace(".q.", ".query.")] = weights[Q0].clone()  # q twice (two names), k missing: same row count
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"'backbone.blocks.0.mlstm_layer.q.weight' is present twice"):
        from_pretrained(saved, weight_mode=weight_mode)
    del weights[Q0.replace(".q.", ".query.")]
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*mlstm_layer.k.weight"):
        from_pretrained(saved, weight_mode=weight_mode)
    weights[K0] = k
    save_file(weights, saved / "model.safetensors")
    assert from_pretrained(saved, weight_mode=weight_mode).config.weight_mode == weight_mode


def test_nxai_shards_holding_one_tensor_twice(saved, tmp_path):
    weights = load_file(saved / "model.safetensors")
    weights["embedding.weight"] = weights.pop("backbone.embeddings.weight")
    del weights[K0]
    nx = tmp_path / "nx"
    nx.mkdir()
    save_file(weights, nx / "model_0.safetensors")
    save_file({Q0: weights[Q0]}, nx / "model_1.safetensors")
    (nx / "config.yaml").write_text("embedding_dim: 32\nnum_heads: 2\nnum_blocks: 2\nvocab_size: 29\n")
    with pytest.raises(ValueError, match="is present twice"):
        from_pretrained(nx, weight_mode="fused")


def test_integer_tensors_are_refused_not_cast(saved, tmp_path):
    weights = load_file(saved / "model.safetensors")
    weights[K0] = weights[K0].to(torch.int32)
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"'backbone.blocks.0.mlstm_layer.k.weight' is stored as torch.int32, but the "
                                         r"model holds floating values there"):
        from_pretrained(saved)

    lm = xLSTMLM(xLSTMLMConfig(vocab_size=20, embedding_dim=32, num_blocks=1, mlstm_num_heads=2))
    lm.save_pretrained(tmp_path / "lm")
    weights = load_file(tmp_path / "lm" / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"].to(torch.int64)
    save_file(weights, tmp_path / "lm" / "model.safetensors")
    with pytest.raises(ValueError, match="'lm_head.weight' is stored as torch.int64"):
        from_pretrained(tmp_path / "lm")
    sd = {k: v.to(torch.int16) if k == "lm_head.weight" else v for k, v in lm.state_dict().items()}
    with pytest.raises(ValueError, match="stored as torch.int16"):
        from_official(*_official(lm, sd))


def _official(lm, sd):
    from flashxlstm import to_official

    off_sd, off_cfg = to_official(lm, as_state_dict=True)
    off_sd["lm_head.weight"] = sd["lm_head.weight"]
    return off_sd, off_cfg


def test_index_may_not_point_outside_the_directory(saved, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    weights = load_file(saved / "model.safetensors")
    save_file(weights, outside / "x.safetensors")
    (saved / "model.safetensors").unlink()
    for name in ("../outside/x.safetensors", str(outside / "x.safetensors"), ".."):
        (saved / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in weights}}))
        with pytest.raises(ValueError, match="not a file name inside the checkpoint directory"):
            from_pretrained(saved)
