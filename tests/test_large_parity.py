"""xLSTMLarge against the official `xlstm` 2.0.6 xLSTMLarge (native torch kernels, CPU) and transformers'
xLSTMForCausalLM, on tiny random configs with perturbed weights: logits within 1e-5 relative in fp32 at
lengths 1, below, at and not a multiple of the chunk size; states equal; greedy generations identical.
Both packages are test dependencies: these tests fail (never skip) when they are missing."""
import copy

import pytest
import torch
from xlstm.xlstm_large.model import xLSTMLarge as OfficialLarge
from xlstm.xlstm_large.model import xLSTMLargeConfig as OfficialConfig

from flashxlstm import from_official, from_pretrained

CHUNK = 8
LENGTHS = [1, 5, CHUNK, 2 * CHUNK, 13]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def official_model(gen, weight_mode="single", dim=64, heads=4):
    cfg = OfficialConfig(
        embedding_dim=dim, num_heads=heads, num_blocks=2, vocab_size=73, mode="inference", return_last_states=True,
        chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native", step_kernel="native",
        chunk_size=CHUNK, weight_mode=weight_mode, autocast_kernel_dtype="float32",
    )
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    off = OfficialLarge(cfg).eval()
    with torch.no_grad():  # move every weight off its init: gate biases, norm weights included
        for p in off.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return off


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_logits_and_states_match_the_official_model(gen, weight_mode):
    off = official_model(gen, weight_mode)
    ours = from_official(off)
    assert ours.config.weight_mode == weight_mode
    for S in LENGTHS:
        ids = torch.randint(0, 73, (2, S), generator=gen)
        with torch.no_grad():
            lo, so = off(ids)
            lu, su = ours(ids)
        assert rel(lu, lo) < 1e-5, S
        for b in range(2):
            for ours_t, off_t in zip(su[b], so[b]):
                assert rel(ours_t, off_t.reshape(ours_t.shape)) < 1e-5, S


def test_continuing_from_a_state_and_greedy_generation_match_the_official_model(gen):
    off = official_model(gen)
    ours = from_official(off)
    prompt = torch.randint(0, 73, (2, 11), generator=gen)
    nxt = torch.randint(0, 73, (2, 3), generator=gen)
    with torch.no_grad():
        _, so = off(prompt)
        lo, _ = off(nxt, copy.deepcopy(so))  # the official model updates states in place
        _, su = ours(prompt)
        lu, _ = ours(nxt, su)
        assert rel(lu, lo) < 1e-5
        toks, _ = off.generate(prefill_tokens=prompt, max_length=12)
    out = ours.generate(prompt, max_new_tokens=12)
    assert torch.equal(out[:, 11:], toks)


def test_official_state_dict_with_config_converts_too(gen):
    off = official_model(gen, "fused")
    ours = from_official(off.state_dict(), off.config)
    ids = torch.randint(0, 73, (1, 9), generator=gen)
    with torch.no_grad():
        assert rel(ours(ids).logits, off(ids)[0]) < 1e-5


def _transformers_model(gen):
    from transformers import xLSTMConfig, xLSTMForCausalLM

    # transformers sizes its cache with qk_dim rounded up to 64, so the width must make D * 0.5 a multiple of 64
    cfg = xLSTMConfig(hidden_size=128, num_hidden_layers=2, num_heads=4, vocab_size=73, chunk_size=CHUNK,
                      max_inference_chunksize=16384)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    hf = xLSTMForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return hf


def test_transformers_checkpoint_loads_into_ours_and_ours_into_transformers(gen, tmp_path):
    from transformers import xLSTMForCausalLM

    hf = _transformers_model(gen)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    for S in LENGTHS:
        ids = torch.randint(0, 73, (2, S), generator=gen)
        with torch.no_grad():
            assert rel(ours(ids).logits, hf(ids).logits) < 1e-5, S

    fused = from_pretrained(tmp_path / "hf", weight_mode="fused")
    fused.save_pretrained(tmp_path / "ours", max_shard_size="100KB")
    assert (tmp_path / "ours" / "model.safetensors.index.json").is_file()
    back = xLSTMForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, 73, (2, 13), generator=gen)
    with torch.no_grad():
        assert rel(back(ids).logits, hf(ids).logits) < 1e-6
        hf_greedy = hf.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=1)
    assert torch.equal(ours.generate(ids, max_new_tokens=10, eos_token_id=2, pad_token_id=1), hf_greedy)
