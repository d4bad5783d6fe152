"""transformers integration: AutoConfig / AutoModelForCausalLM open our checkpoints whichever is imported
first (flashxlstm here, transformers in the hub test's child process); 7B-family checkpoints open in transformers' own xLSTMForCausalLM, and save_pretrained refuses the
shapes it cannot run (shown: such a shape really fails in transformers); hub ids resolve offline from a
local Hugging Face cache the test builds, with a clear message when the id is not cached."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import flashxlstm
from flashxlstm import xLSTMLarge, xLSTMLargeConfig, xLSTMLM, xLSTMLMConfig


def small_lm():
    torch.manual_seed(0)
    return xLSTMLM(xLSTMLMConfig(vocab_size=40, embedding_dim=32, num_blocks=2, slstm_at=[1], mlstm_num_heads=2,
                                 slstm_num_heads=2)).eval()


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_auto_classes_open_neurips_and_flashxlstm_large_checkpoints(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    lm = small_lm()
    lm.save_pretrained(tmp_path / "neurips")
    assert AutoConfig.from_pretrained(tmp_path / "neurips").model_type == "flashxlstm-neurips"
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "neurips", dtype=torch.float64, device_map="cpu")
    ids = torch.randint(0, 40, (2, 9))
    assert isinstance(auto, xLSTMLM) and auto.token_embedding.weight.dtype == torch.float64
    torch.testing.assert_close(auto(ids).logits.float(), lm(ids).logits, rtol=1e-5, atol=1e-5)

    large = xLSTMLarge(xLSTMLargeConfig(embedding_dim=48, num_heads=2, num_blocks=1, vocab_size=40)).eval()
    large.save_pretrained(tmp_path / "large", for_transformers=False)
    opened = AutoModelForCausalLM.from_pretrained(tmp_path / "large", torch_dtype="auto")
    assert isinstance(opened, xLSTMLarge)
    torch.testing.assert_close(opened(ids).logits, large(ids).logits)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "neurips"))
    assert isinstance(fresh, xLSTMLM) and fresh.config == lm.config


def test_save_pretrained_refuses_what_transformers_cannot_run(tmp_path):
    from transformers import xLSTMForCausalLM

    torch.manual_seed(0)
    bad = xLSTMLarge(xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=1, vocab_size=40)).eval()
    with pytest.raises(ValueError, match="q/k width .* is 32, not a multiple of 64.*for_transformers=False"):
        bad.save_pretrained(tmp_path / "bad")
    # the constraint is real: the same weights labelled for transformers fail there
    bad.save_pretrained(tmp_path / "bad", for_transformers=False)
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["model_type"] = "xlstm"
    for name in ("qk_dim", "v_dim", "ffn_dim"):
        config.pop(name)
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    ids = torch.randint(0, 40, (1, 5))
    with pytest.raises(RuntimeError, match="expanded size"):
        with torch.no_grad():
            xLSTMForCausalLM.from_pretrained(tmp_path / "bad")(ids)

    good = xLSTMLarge(xLSTMLargeConfig(embedding_dim=128, num_heads=2, num_blocks=1, vocab_size=40)).eval()
    good.save_pretrained(tmp_path / "good")
    theirs = xLSTMForCausalLM.from_pretrained(tmp_path / "good").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, good(ids).logits, rtol=1e-4, atol=1e-4)
    explicit = xLSTMLarge(xLSTMLargeConfig(embedding_dim=128, num_heads=2, num_blocks=1, vocab_size=40, v_dim=192))
    with pytest.raises(ValueError, match="v_dim is 192, but transformers derives 128"):
        explicit.save_pretrained(tmp_path / "explicit")


def _hub_cache(home, repo_id: str, files_from) -> None:
    """The layout huggingface_hub's cache uses: models--owner--name/{refs/main, snapshots/<commit>/files}."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)


def test_hub_ids_offline_from_the_cache_and_a_clear_message_when_not_cached(tmp_path):
    lm = small_lm()
    lm.save_pretrained(tmp_path / "src")
    _hub_cache(tmp_path / "hf", "acme/tiny-xlstm", tmp_path / "src")
    ids = torch.randint(0, 40, (1, 6))
    torch.save({"ids": ids, "logits": lm(ids).logits}, tmp_path / "ref.pt")
    out = run_python(f"""
        import transformers.models.auto.modeling_auto  # transformers first: registration when flashxlstm comes
        import torch, flashxlstm
        from transformers import AutoModelForCausalLM
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        for model in (flashxlstm.from_pretrained("acme/tiny-xlstm"), flashxlstm.xLSTMLM.from_pretrained("acme/tiny-xlstm"),
                      AutoModelForCausalLM.from_pretrained("acme/tiny-xlstm")):
            torch.testing.assert_close(model(ref["ids"]).logits, ref["logits"])
        try:
            flashxlstm.from_pretrained("NX-AI/xLSTM-7b")
        except FileNotFoundError as e:
            print(e)
    """, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    message = out.stdout.strip()
    assert "'NX-AI/xLSTM-7b' is not a local directory" in message and "HF_HUB_OFFLINE=1" in message
    assert str(tmp_path / "hf" / "hub") in message and "hf download NX-AI/xLSTM-7b" in message
