"""`flashxlstm.from_pretrained` across layouts (hub single/sharded, NX-AI config.yaml, our NeurIPS format),
key variants (query/key/value), single <-> fused on load, and the errors a user sees for broken directories."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from flashxlstm import from_pretrained, xLSTMLarge, xLSTMLargeConfig
from flashxlstm.checkpoints.hub import parse_size, plan_shards

CFG = dict(embedding_dim=48, num_heads=4, num_blocks=2, vocab_size=61, chunk_size=8)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture
def model(gen):
    m = xLSTMLarge(xLSTMLargeConfig(**CFG))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return m.eval()


@pytest.fixture
def ids(gen):
    return torch.randint(0, 61, (2, 11), generator=gen)


def test_hub_roundtrip_single_sharded_and_fused(model, ids, tmp_path):
    ref = model(ids).logits
    model.save_pretrained(tmp_path / "one", for_transformers=False)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert config["model_type"] == "flashxlstm-large" and config["hidden_size"] == config["embedding_dim"] == 48
    assert torch.equal(from_pretrained(tmp_path / "one")(ids).logits, ref)

    model.save_pretrained(tmp_path / "many", max_shard_size="20KB", for_transformers=False)
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and set(index["weight_map"]) == set(model.state_dict())
    fused = from_pretrained(tmp_path / "many", weight_mode="fused")
    assert fused.config.weight_mode == "fused" and rel(fused(ids).logits, ref) < 1e-6
    fused.save_pretrained(tmp_path / "many", max_shard_size="1MB", for_transformers=False)  # resave over it: stale shards go
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["config.json", "model.safetensors"]
    assert rel(from_pretrained(tmp_path / "many")(ids).logits, ref) < 1e-6

    half = from_pretrained(tmp_path / "one", dtype="bfloat16")
    assert half.lm_head.weight.dtype == torch.bfloat16 and half.backbone.embeddings.weight.device.type == "cpu"


def test_query_key_value_names_and_nxai_layout(model, ids, tmp_path):
    ref = model(ids).logits
    model.save_pretrained(tmp_path / "qkv", for_transformers=False)
    weights = load_file(tmp_path / "qkv" / "model.safetensors")
    renamed = {k.replace(".q.", ".query.").replace(".k.", ".key.").replace(".v.", ".value."): v for k, v in weights.items()}
    save_file(renamed, tmp_path / "qkv" / "model.safetensors")
    assert rel(from_pretrained(tmp_path / "qkv")(ids).logits, ref) < 1e-7

    nx = tmp_path / "nxai"
    nx.mkdir()
    official = {("embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in weights.items()}
    keys = sorted(official)
    save_file({k: official[k] for k in keys[:10]}, nx / "model_0.safetensors")
    save_file({k: official[k] for k in keys[10:]}, nx / "model_1.safetensors")
    (nx / "config.yaml").write_text(yaml.safe_dump({**CFG, "mode": "inference", "chunkwise_kernel": "chunkwise--triton_xl_chunk"}))
    assert rel(from_pretrained(nx)(ids).logits, ref) < 1e-7


def test_sizes_come_from_the_tensors_when_the_config_disagrees(model, ids, tmp_path):
    model.save_pretrained(tmp_path, for_transformers=False)
    config = json.loads((tmp_path / "config.json").read_text())
    config["ffn_proj_factor"] = 1.0  # would give a 64-wide FFN; the tensors say otherwise
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = from_pretrained(tmp_path)
    assert loaded.config.ffn_hidden_dim == model.config.ffn_hidden_dim
    assert rel(loaded(ids).logits, model(ids).logits) < 1e-7


def test_neurips_checkpoints_dispatch_to_the_native_loader(gen, tmp_path):
    from flashxlstm import xLSTMLM, xLSTMLMConfig
    from flashxlstm.checkpoints import native

    lm = xLSTMLM(xLSTMLMConfig(vocab_size=31, embedding_dim=32, num_blocks=2, mlstm_chunk_size=8)).eval()
    native.save_model(lm, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is xLSTMLM
    x = torch.randint(0, 31, (1, 7), generator=gen)
    assert torch.allclose(loaded(x).logits, lm(x).logits)


def test_clear_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        from_pretrained(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        from_pretrained(tmp_path / "junk")
    (tmp_path / "junk" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unknown model_type 'llama'"):
        from_pretrained(tmp_path / "junk")

    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB", for_transformers=False)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "sharded" / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing shard .*{shard}"):
        from_pretrained(tmp_path / "sharded")

    model.save_pretrained(tmp_path / "bad", for_transformers=False)
    weights = load_file(tmp_path / "bad" / "model.safetensors")
    key = "backbone.blocks.1.mlstm_layer.out_proj.weight"
    weights[key] = torch.zeros(48, 40)
    save_file(weights, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone.blocks.1.mlstm_layer.out_proj.weight': "
                                         r"checkpoint \(48, 40\), model expects \(48, 48\)"):
        from_pretrained(tmp_path / "bad")
    del weights[key]
    save_file(weights, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 1 tensor.*out_proj"):
        from_pretrained(tmp_path / "bad")
    weights[key] = torch.zeros(48, 48)
    weights["backbone.blocks.1.extra.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(ValueError, match="does not have, such as 'backbone.blocks.1.extra.weight'"):
        from_pretrained(tmp_path / "bad")


def test_shard_planning_and_sizes():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(1000) == 1000
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")
    assert plan_shards({"a": 4, "b": 4, "c": 9, "d": 1}, 8) == [["a", "b"], ["c"], ["d"]]


def test_convert_between_weight_modes_in_memory(model, ids):
    fused = model.converted(weight_mode="fused")
    back = fused.converted(weight_mode="single")
    assert rel(fused(ids).logits, model(ids).logits) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
