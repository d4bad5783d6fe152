"""The lm-evaluation-harness model `flashxlstm` (flashxlstm.integrations.lm_eval).

- Against a slow, obviously correct reference on a byte-level NeurIPS model: every loglikelihood equals one
  full forward over context + continuation (shared contexts, empty context, one-token and multi-byte
  continuations, contexts of different lengths, more continuations than a batch), every rolling
  loglikelihood one full forward over the document (documents longer than a prefill chunk, an empty one),
  and generate_until the greedy loop that recomputes the whole sequence for each token, cut at the stop strings.
- The `lm_eval` command line (`flashxlstm lm-eval`, lm_eval's own parser) on local tasks (YAML + JSONL written
  here, loaded with --include_path) gives the accuracy and perplexity of the reference.
- On a tiny 7B-family checkpoint with a tokenizer, every metric and every per-sample result equals lm-eval's
  `hf` backend running transformers' own xLSTMForCausalLM on the same checkpoint.
lm-eval and transformers are test dependencies: these tests fail (never skip) when they are missing.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

import flashxlstm.integrations.lm_eval as fx
from flashxlstm import xLSTMLarge, xLSTMLargeConfig, xLSTMLM, xLSTMLMConfig
from flashxlstm.checkpoints.native import save_model
from flashxlstm.integrations._model_io import call

SRC = Path(fx.__file__).resolve().parents[2]

CHOICE_DOCS = [
    {"question": "The cat sat on the", "choices": [" mat", " hat", " moon"], "answer": 0},
    {"question": "Two plus two is", "choices": [" four", " five"], "answer": 1},
    {"question": "x", "choices": [" é ü", " y", "z"], "answer": 2},
    {"question": "A longer question about recurrent models and their state:", "choices": [" yes", " no"], "answer": 0},
]
ROLLING_DOCS = [{"text": ("the quick brown fox jumps over the lazy dog " * 3).strip()}, {"text": "hello world"},
                {"text": "a"}]
GEN_DOCS = [{"prompt": "Q: the cat\nA:", "answer": " mat"}, {"prompt": "hello", "answer": " world"},
            {"prompt": "Q: a longer prompt that needs more tokens\nA:", "answer": " x"}]


def perturbed(model, gen):
    with torch.no_grad():  # move every weight off its init so the scores are not all alike
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def byte_model(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    cfg = xLSTMLMConfig(vocab_size=256, embedding_dim=32, num_blocks=2, slstm_at=[1], mlstm_num_heads=2,
                        slstm_num_heads=2, mlstm_chunk_size=8)
    return perturbed(xLSTMLM(cfg), gen)


@torch.no_grad()
def full_pass_logprobs(model, ids):
    logits, _ = call(model, torch.tensor([ids]))
    return F.log_softmax(logits[0].double(), dim=-1)


def reference_loglikelihood(model, context, continuation, prefix):
    """One forward over context + continuation (bytes), scoring the continuation as lm-eval splits it."""
    if context == "":
        ctx, cont = [prefix], list(continuation.encode())
    else:
        n = len(context) - len(context.rstrip())  # lm-eval moves the context's trailing spaces to the continuation
        ctx = list(context[:len(context) - n].encode())
        cont = list((context[len(context) - n:] + continuation).encode())
    lp = full_pass_logprobs(model, ctx + cont)[len(ctx) - 1:-1]
    target = torch.tensor(cont)
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def reference_rolling(model, text, prefix):
    ids = list(text.encode())
    if not ids:
        return 0.0
    lp = full_pass_logprobs(model, [prefix] + ids[:-1])
    return float(lp.gather(-1, torch.tensor(ids)[:, None]).sum())


def reference_generate(model, context, until, max_new):
    ids = list(context.encode())
    new = []
    for _ in range(max_new):
        new.append(int(full_pass_logprobs(model, ids + new)[-1].argmax()))
    text = bytes(new).decode("utf-8", errors="replace")
    for stop in until:
        text = text.split(stop)[0]
    return text


def test_loglikelihood_from_context_states_equals_a_full_pass(gen):
    model = byte_model(gen)
    lm = fx.FlashxLSTMLM(pretrained=model, tokenizer="bytes", batch_size=3)
    pairs = [(d["question"], c) for d in CHOICE_DOCS for c in d["choices"]]
    pairs += [("", "starts from the prefix byte"), ("trailing space ", "x"), ("abc", "\n")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, 0) for p in pairs], disable_tqdm=True)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        ref_ll, ref_greedy = reference_loglikelihood(model, ctx, cont, lm.prefix_token_id)
        assert abs(ll - ref_ll) < 1e-4 * max(1.0, abs(ref_ll)), (ctx, cont, ll, ref_ll)
        assert greedy == ref_greedy
    assert lm.prefix_token_id == ord("\n")


def test_rolling_loglikelihood_equals_a_full_pass(gen):
    model = byte_model(gen)
    lm = fx.FlashxLSTMLM(pretrained=model, tokenizer="bytes", batch_size=2, prefill_chunk_size=16)
    texts = [d["text"] for d in ROLLING_DOCS] + ["", "x" * 40]
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), 0) for t in texts])
    for text, ll in zip(texts, got):
        ref = reference_rolling(model, text, lm.prefix_token_id)
        assert abs(ll - ref) < 1e-4 * max(1.0, abs(ref)), (text, ll, ref)


def test_generate_until_equals_the_greedy_full_recompute_loop(gen):
    model = byte_model(gen)
    lm = fx.FlashxLSTMLM(pretrained=model, tokenizer="bytes", batch_size=2)
    # stop strings the random model is likely to produce: its own first greedy bytes after a prompt
    free = reference_generate(model, GEN_DOCS[0]["prompt"], [], 6)
    until = [free[2:4] or "\n", "\n"]
    args = {"until": until, "max_gen_toks": 6, "do_sample": False}
    prompts = [d["prompt"] for d in GEN_DOCS] + [GEN_DOCS[0]["prompt"]]
    got = lm.generate_until([Instance("generate_until", {}, (p, args), 0) for p in prompts])
    assert got == [reference_generate(model, p, until, 6) for p in prompts]
    top1 = {"until": until, "max_gen_toks": 6, "do_sample": True, "top_k": 1}  # sampling among one: greedy
    assert lm.generate_until([Instance("generate_until", {}, (prompts[1], top1), 0)]) == got[1:2]
    with pytest.raises(ValueError, match="unsupported generation arguments"):
        lm.generate_until([Instance("generate_until", {}, ("x", {"until": ["\n"], "num_beams": 4}), 0)])


def write_tasks(root: Path) -> list[str]:
    """Three local lm-eval tasks (multiple choice, rolling perplexity, generation) over JSONL files."""
    root.mkdir(parents=True, exist_ok=True)
    tasks = {
        "fx_choice": (CHOICE_DOCS, 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
                                   'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
                                   "metric_list:\n  - metric: acc\n"),
        "fx_rolling": (ROLLING_DOCS, 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                                     "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"),
        "fx_gen": (GEN_DOCS, 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
                             'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 5\n  do_sample: false\n'
                             "metric_list:\n  - metric: exact_match\n"),
    }
    for name, (docs, body) in tasks.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / f'{name}.jsonl'}\n"
            f"  cache_dir: {root / 'datasets_cache'}\ntest_split: test\n{body}")
    return list(tasks)


def test_lm_eval_command_line_on_local_tasks(gen, tmp_path):
    model = byte_model(gen)
    save_model(model, tmp_path / "ckpt")
    names = write_tasks(tmp_path / "tasks")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "flashxlstm.cli.main", "lm-eval", "--model", "flashxlstm",
           "--model_args", f"pretrained={tmp_path / 'ckpt'}", "--batch_size", "4", "--tasks", ",".join(names),
           "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())["results"]

    prefix = ord("\n")
    correct = []
    for d in CHOICE_DOCS:
        lls = [reference_loglikelihood(model, d["question"], c, prefix)[0] for c in d["choices"]]
        correct.append(float(max(range(len(lls)), key=lls.__getitem__) == d["answer"]))
    assert results["fx_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
    total = sum(reference_rolling(model, d["text"], prefix) for d in ROLLING_DOCS)
    words = sum(len(d["text"].split()) for d in ROLLING_DOCS)
    nbytes = sum(len(d["text"].encode()) for d in ROLLING_DOCS)
    assert results["fx_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-5)
    assert results["fx_rolling"]["bits_per_byte,none"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-5)
    hits = [float(reference_generate(model, d["prompt"], ["\n"], 5) == d["answer"]) for d in GEN_DOCS]
    assert results["fx_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)


def large_checkpoint(gen, path: Path) -> None:
    """A tiny 7B-family model saved by save_pretrained, with a byte-level BPE tokenizer beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = " ".join(d["question"] + " " + " ".join(d["choices"]) for d in CHOICE_DOCS)
    corpus += " ".join(d["text"] for d in ROLLING_DOCS) + " ".join(d["prompt"] for d in GEN_DOCS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([corpus] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|bos|>", "<|pad|>", "<|eos|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    # transformers sizes its cache with qk_dim rounded up to 64: D * 0.5 must be a multiple of 64
    cfg = xLSTMLargeConfig(embedding_dim=128, num_heads=4, num_blocks=2, vocab_size=tok.get_vocab_size(),
                           chunk_size=8, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    perturbed(xLSTMLarge(cfg), gen).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", pad_token="<|pad|>",
                            eos_token="<|eos|>").save_pretrained(path)


def test_scores_equal_the_hf_backend_through_transformers_xlstm(gen, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import xLSTMForCausalLM

    large_checkpoint(gen, tmp_path / "ckpt")
    names = write_tasks(tmp_path / "tasks")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)

    # hf: one request at a time, since transformers' xLSTM lets left padding into its state when batched;
    # ours batches (left padding with an attention mask, continuations from copied states)
    hf = HFLM(pretrained=str(tmp_path / "ckpt"), device="cpu", batch_size=1)
    assert isinstance(hf.model, xLSTMForCausalLM)
    runs = {backend: simple_evaluate(model=model, model_args=args, tasks=names, task_manager=tm, batch_size=4,
                                     log_samples=True)
            for backend, model, args in (("hf", hf, None), ("flashxlstm", "flashxlstm", f"pretrained={tmp_path / 'ckpt'}"))}
    compared = 0
    for name in names:
        ours, theirs = runs["flashxlstm"]["results"][name], runs["hf"]["results"][name]
        for metric, value in theirs.items():
            if metric.endswith(",none") and "stderr" not in metric:
                assert ours[metric] == pytest.approx(value, rel=1e-5, abs=1e-9), (name, metric)
                compared += 1
        for a, b in zip(runs["flashxlstm"]["samples"][name], runs["hf"]["samples"][name], strict=True):
            for (x,), (y,) in zip(a["resps"], b["resps"], strict=True):
                if isinstance(y, str):  # generated text
                    assert x == y
                elif isinstance(y, (tuple, list)):  # (loglikelihood, is_greedy)
                    assert x[0] == pytest.approx(y[0], rel=1e-5, abs=1e-5) and x[1] == y[1]
                else:  # rolling loglikelihood
                    assert x == pytest.approx(y, rel=1e-5, abs=1e-5)
    assert compared == 4  # acc, word_perplexity, bits_per_byte, exact_match
