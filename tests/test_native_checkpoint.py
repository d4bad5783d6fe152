"""Our checkpoint format: round trip, and one-line errors for every way a checkpoint can be broken."""
import json

import pytest
import torch

from flashxlstm.checkpoints import native
from flashxlstm.checkpoints.native import read_config, save_model
from flashxlstm.models.xlstm_lm import xLSTMLM, xLSTMLMConfig

load_model = xLSTMLM.load_checkpoint


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, embedding_dim=32, num_blocks=2, slstm_at="xlstm[1:1]", mlstm_num_heads=2,
               slstm_num_heads=2)
    cfg.update(kw)
    return xLSTMLM(xLSTMLMConfig(**cfg))


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tie):
    model = _model(tie_weights=tie)
    save_model(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "flashxlstm-neurips" and config["embedding_dim"] == 32
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training and loaded.config == model.config
    if tie:
        assert loaded.lm_head.weight is loaded.token_embedding.weight
    ids = torch.randint(0, 40, (2, 7))
    model.eval()
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    as64 = load_model(tmp_path / "ckpt", dtype=torch.float64, device="cpu")
    assert as64.token_embedding.weight.dtype == torch.float64


def _saved(tmp_path):
    path = tmp_path / "ckpt"
    save_model(_model(), path)
    return path


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_model(tmp_path / "nothing")
    path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(path)


def test_corrupt_files(tmp_path):
    path = _saved(tmp_path)
    weights = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="corrupt model.safetensors"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt config.json"):
        load_model(path)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_model(path)


def _edit_config(path, **changes):
    config = read_config(path)
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_inconsistent_configs(tmp_path):
    path = _saved(tmp_path)
    _edit_config(path, embedding_dim=48)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_model(path)
    _edit_config(path, embedding_dim=32, num_blocks=3)
    with pytest.raises(ValueError, match="does not match the model.s config: it lacks"):
        load_model(path)
    _edit_config(path, num_blocks=2, slstm_at=[5])
    with pytest.raises(ValueError, match="inconsistent model config.*slstm_at"):
        load_model(path)
    _edit_config(path, slstm_at=[1], no_such_field=1)
    with pytest.raises(ValueError, match="inconsistent model config.*no_such_field"):
        load_model(path)
    config = read_config(path)
    del config["no_such_field"], config["model_type"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no model_type"):
        load_model(path)
    config["model_type"] = "something-else"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown model_type 'something-else'"):
        load_model(path)


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = load_model(path).state_dict()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(native, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(_model(embedding_dim=64), path)
    after = load_model(path).state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_rejects_foreign_modules(tmp_path):
    with pytest.raises(TypeError, match="cannot save a Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x")
