"""generate's transformers keyword set on both families: EOS from the config, min/max lengths, repetition
penalty, generation_config, scores, batched left padding == one by one, and clear errors for bad values."""
import pytest
import torch

from flashxlstm.generation import GenerateOutput, generate

from test_model_api import FAMILIES, V


def one_by_one(model, rows, **kw):
    return [model.generate(r[None], **kw)[0, len(r):] for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padding_equals_one_by_one_with_eos(gen, family):
    model = FAMILIES[family](gen, eos_token_id=3, pad_token_id=0) if family == "neurips" else FAMILIES[family](gen)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    lengths = [1, 5, 3, 7]
    rows = [torch.randint(4, V, (n,), generator=gen) for n in lengths]
    P = max(lengths)
    ids = torch.stack([torch.cat([torch.full((P - len(r),), pad), r]) for r in rows])
    mask = torch.stack([torch.arange(P) >= P - n for n in lengths]).long()
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=12, repetition_penalty=1.5, min_new_tokens=4),
               dict(max_new_tokens=12, do_sample=True, top_k=8, top_p=0.9, temperature=0.7)):
        if kw.get("do_sample"):  # one generator per row would differ from one shared stream: compare greedy-free parts
            a = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(0), **kw)
            b = model.generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(0), **kw)
            assert torch.equal(a, b)
            continue
        batched = model.generate(ids, attention_mask=mask, **kw)
        for b, alone in enumerate(one_by_one(model, rows, **kw)):
            assert torch.equal(batched[b, P : P + len(alone)], alone), (kw, b)
            assert (batched[b, P + len(alone):] == pad).all()
            if len(alone) < 12:
                assert alone[-1] == eos  # stopped at the config's EOS
            if "min_new_tokens" in kw:
                assert eos not in alone[:4].tolist()


def test_eos_from_the_config_and_length_keywords(gen):
    model = FAMILIES["large"](gen)
    prompt = torch.randint(3, V, (2, 4), generator=gen)
    scores = model.generate(prompt, max_new_tokens=8, eos_token_id=None, return_dict_in_generate=True,
                            output_scores=True, output_logits=True)
    assert isinstance(scores, GenerateOutput) and len(scores.scores) == 8 == len(scores.logits)
    assert torch.equal(torch.stack(scores.scores, 1).argmax(-1), scores.sequences[:, 4:])
    assert model.generate(prompt, max_length=7, eos_token_id=None).shape == (2, 7)
    assert model.generate(prompt, max_length=7, max_new_tokens=2, eos_token_id=None).shape == (2, 6)
    assert model.generate(prompt, generation_config={"max_new_tokens": 3, "eos_token_id": None}).shape == (2, 7)
    from transformers import GenerationConfig

    hf = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert model.generate(prompt, generation_config=hf).shape == (2, 9)

    # the config's EOS stops generation by default: make the first greedy token of row 0 the EOS
    model.config.eos_token_id = int(scores.sequences[0, 4])
    assert model.generate(prompt[:1], max_new_tokens=8).shape == (1, 5)
    held = model.generate(prompt[:1], max_new_tokens=8, min_new_tokens=3)
    assert held.shape[1] > 7 - 1 and model.config.eos_token_id not in held[0, 4:7].tolist()


def test_repetition_penalty_matches_transformers(gen):
    from transformers import RepetitionPenaltyLogitsProcessor

    from flashxlstm.generation import process_logits
    from flashxlstm.generation.generate import _seen_tokens

    ids = torch.randint(0, V, (3, 6), generator=gen)
    logits = torch.randn(3, V, generator=gen)
    want = RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    got = process_logits(logits, seen=_seen_tokens(ids, None, V), repetition_penalty=1.7)
    torch.testing.assert_close(got, want)


def test_bad_values_are_clear_errors(gen):
    model = FAMILIES["neurips"](gen)
    prompt = torch.randint(0, V, (1, 3), generator=gen)
    for kw, msg in ((dict(temperature=float("nan")), "temperature must be a finite"),
                    (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
                    (dict(repetition_penalty=0.0), "repetition_penalty"),
                    (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
                    (dict(eos_token_id=[]), "eos_token_id"), (dict(no_such=1), "unexpected keyword")):
        with pytest.raises((ValueError, TypeError), match=msg):
            model.generate(prompt, **kw)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(model, prompt[:0], 3)
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    for sample in (False, True):
        with pytest.raises(ValueError, match="NaN or \\+inf logits at new token 0 in rows \\[0\\]"):
            model.generate(prompt, max_new_tokens=3, do_sample=sample)


def test_cli_refuses_a_nan_temperature(gen, tmp_path, capsys):
    from flashxlstm.cli.main import main

    FAMILIES["neurips"](gen, vocab_size=256).save_pretrained(tmp_path / "m")
    for flag, value in (("--temperature", "nan"), ("--temperature", "inf"), ("--top-p", "nan")):
        assert main(["generate", "--checkpoint", str(tmp_path / "m"), "--prompt", "a", flag, value]) == 2
        assert f"{flag} must be" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_static_buffer_step_equals_eager_for_both_families(gen, family):
    """The CUDA-graph decode path (static buffers; run eagerly on the CPU) gives the eager tokens."""
    model = FAMILIES[family](gen)
    prompt = torch.randint(3, V, (2, 5), generator=gen)
    eager = model.generate(prompt, max_new_tokens=6, eos_token_id=None, use_cuda_graph=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=6, eos_token_id=None, use_cuda_graph=True), eager)
