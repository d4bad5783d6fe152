"""lm-evaluation-harness model `flashxlstm`: both model families, scored from recurrent states.

    flashxlstm lm-eval --model flashxlstm --model_args pretrained=DIR --tasks TASKS [any lm_eval flag]
    python -m flashxlstm.integrations.lm_eval --model flashxlstm ...     # the same command

    import flashxlstm.integrations.lm_eval, lm_eval                  # importing registers the model
    lm_eval.simple_evaluate(model="flashxlstm", model_args="pretrained=DIR", tasks=[...])

lm-eval 0.4.x finds models only in its own registry (it reads no entry points; README, "Evaluation with
lm-evaluation-harness", says why a bare `lm_eval --model flashxlstm` cannot work), so the command above is
lm-eval's own command line with this module imported first; every lm_eval flag (--include_path for local
tasks, --limit, --log_samples, ...) works as documented there.

model_args: pretrained (a checkpoint directory `flashxlstm.from_pretrained` opens, or a model object from
Python), tokenizer (default: the checkpoint's tokenizer files through transformers' AutoTokenizer, or "bytes"
for a byte-level model: ids are UTF-8 bytes), dtype, device, batch_size, add_bos_token, prefix_token_id (the
token scoring starts from when a context is empty: default BOS, else EOS, else "\\n" for bytes),
max_gen_toks (default 256), prefill_chunk_size (tokens per forward, default 2048: memory stays flat in length).

How requests are scored: a recurrent model needs no window, so nothing is truncated.
- loglikelihood: requests sharing a context run that context once; its state is copied to one batch row per
  continuation and only the continuations run from there (right-padded; padding after a continuation never
  touches its scores). Contexts of different lengths share a batch with left padding and an attention mask.
- loglikelihood_rolling: the whole document in one pass from the prefix token, in chunks that carry the state
  (lm-eval's `hf` backend cuts documents longer than its max length into windows; up to that length the
  scores are the same).
- generate_until: batched prefill, then one token at a time from the state, until every row has produced
  EOS or a stop string or max_gen_toks tokens; greedy unless do_sample (temperature, top_k, top_p).
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from ..generation.sampling import next_token
from ._model_io import accepts, call, take_rows

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
SAMPLING_KEYS = {"do_sample", "temperature", "top_k", "top_p"}


class ByteTokenizer:
    """Text as its UTF-8 bytes: the token ids of flashxlstm's byte-level models (vocab_size 256)."""

    bos_token_id = eos_token_id = None
    name_or_path = "bytes"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ([ids] if isinstance(ids, int) else ids)).decode("utf-8", errors="replace")


def _as_int(name: str, value: Any, minimum: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = None
    if out is None or out < minimum or (isinstance(value, float) and value != out):
        raise ValueError(f"flashxlstm lm-eval: {name} must be an integer >= {minimum}, got {value!r}")
    return out


def _load_tokenizer(spec: Any, directory: Path | None, vocab_size: int | None):
    if spec is not None and not isinstance(spec, str):
        return spec  # a tokenizer object from Python
    if spec == "bytes" or (spec is None and vocab_size == 256 and not _has_tokenizer(directory)):
        return ByteTokenizer()
    source = spec if spec is not None else directory
    if source is None or (spec is None and not _has_tokenizer(directory)):
        raise ValueError(f"flashxlstm lm-eval: the checkpoint {directory} has no tokenizer files "
                         f"({', '.join(TOKENIZER_FILES)}) and vocab_size {vocab_size} is not byte-level (256); "
                         "pass tokenizer=PATH_OR_NAME (anything transformers.AutoTokenizer opens) or tokenizer=bytes")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def _has_tokenizer(directory: Path | None) -> bool:
    return directory is not None and any((directory / f).is_file() for f in TOKENIZER_FILES)


@register_model("flashxlstm")
class FlashxLSTMLM(TemplateLM):
    """A flashxlstm model (either family) as an lm-eval LM; see the module docstring for the arguments."""

    def __init__(self, pretrained: Any, tokenizer: Any = None, dtype: Any = None, device: str | None = None,
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_batch_size: int | None = None,
                 add_bos_token: bool | None = None, prefix_token_id: int | None = None, max_gen_toks: int = 256,
                 prefill_chunk_size: int = 2048, **unused: Any):
        super().__init__()
        if unused:
            log.warning("flashxlstm lm-eval: ignoring model_args %s", sorted(unused))
        directory = None
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for cuda:0 unless told otherwise; its hf backend falls back the same way
            log.warning("flashxlstm lm-eval: device %s requested but CUDA is not available; using the CPU", device)
            device = "cpu"
        if isinstance(pretrained, torch.nn.Module):
            model = pretrained if device is None else pretrained.to(device)
        else:
            from .. import from_pretrained  # the package's loader: either family, from a directory

            directory = Path(str(pretrained))
            model = from_pretrained(directory, dtype=dtype, device=device or "cpu")
        self.model = model.eval()
        self._device = next(model.parameters()).device
        vocab = getattr(model.config, "vocab_size", None)
        self.tokenizer = _load_tokenizer(tokenizer, directory, vocab)
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = DEFAULT_BATCH_SIZE  # a recurrent model's memory does not grow with context: no search
        self.batch_size = _as_int("batch_size", batch_size, 1)
        self.max_gen_toks = _as_int("max_gen_toks", max_gen_toks, 1)
        self.prefill_chunk_size = _as_int("prefill_chunk_size", prefill_chunk_size, 1)
        self.add_bos_token = add_bos_token
        self._prefix = None if prefix_token_id is None else _as_int("prefix_token_id", prefix_token_id, 0)
        self._masks = accepts(model, "attention_mask")

    # ---- tokens -------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self._prefix is not None:
            return self._prefix
        for tid in (getattr(self.tokenizer, "bos_token_id", None), self.tokenizer.eos_token_id):
            if tid is not None:
                return tid
        if isinstance(self.tokenizer, ByteTokenizer):
            return ord("\n")
        raise ValueError("flashxlstm lm-eval: the tokenizer has neither BOS nor EOS; pass prefix_token_id=ID")

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        if add_special_tokens is None:
            return self.tokenizer.encode(string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- model calls --------------------------------------------------------------------------------------
    def _forward(self, ids: Tensor, state: Any, mask: Tensor | None = None, all_logits: bool = True):
        """ids (B, S) from `state` in chunks of prefill_chunk_size carrying the state: log-probabilities of every
        position (B, S, V) float32 (only the last (B, V) when not all_logits) and the state after S."""
        out = []
        for a in range(0, ids.shape[1], self.prefill_chunk_size):
            piece = slice(a, a + self.prefill_chunk_size)
            m = None if mask is None or bool(mask[:, piece].all()) else mask[:, piece]
            logits, state = call(self.model, ids[:, piece], state, m)
            out.append(logits if all_logits else logits[:, -1:])
        logprobs = F.log_softmax(torch.cat(out, dim=1).float(), dim=-1)
        return (logprobs if all_logits else logprobs[:, -1]), state

    def _prefill(self, contexts: list[list[int]]) -> tuple[Tensor, Any]:
        """Contexts (left-padded together) -> last-position log-probabilities (N, V) and the state (N rows)."""
        width = max(len(c) for c in contexts)
        ids = torch.zeros(len(contexts), width, dtype=torch.long)
        mask = torch.zeros(len(contexts), width, dtype=torch.long)
        for r, c in enumerate(contexts):
            ids[r, width - len(c):] = torch.tensor(c, dtype=torch.long)
            mask[r, width - len(c):] = 1
        mask = None if bool(mask.all()) else mask.to(self._device)
        return self._forward(ids.to(self._device), None, mask, all_logits=False)

    def _context_batches(self, contexts: list[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
        """Batches of contexts, longest first; equal lengths only when the model takes no attention mask."""
        contexts = sorted(contexts, key=len, reverse=True)
        batches: list[list[tuple[int, ...]]] = []
        for c in contexts:
            last = batches[-1] if batches else None
            if last is None or len(last) == self.batch_size or (not self._masks and len(last[0]) != len(c)):
                batches.append([c])
            else:
                last.append(c)
        return batches

    # ---- requests -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        by_context: dict[tuple[int, ...], list[int]] = {}
        for n, (_, context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise ValueError(f"flashxlstm lm-eval: request {n} has an empty context or continuation after tokenizing")
            by_context.setdefault(tuple(context), []).append(n)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for batch in self._context_batches(list(by_context)):
            last, state = self._prefill([list(c) for c in batch])
            items = [(row, n) for row, c in enumerate(batch) for n in by_context[c]]
            for a in range(0, len(items), self.batch_size):
                part = items[a:a + self.batch_size]
                conts = [requests[n][2] for _, n in part]
                rows = torch.tensor([row for row, _ in part], device=self._device)
                logprobs = last.index_select(0, rows)[:, None]  # (n, 1, V): predicts each continuation's first token
                longest = max(len(c) for c in conts)
                if longest > 1:  # the rest from a copy of the context's state, one row per continuation
                    ids = torch.zeros(len(part), longest - 1, dtype=torch.long)
                    for k, c in enumerate(conts):
                        ids[k, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                    rest, _ = self._forward(ids.to(self._device), take_rows(state, rows))
                    logprobs = torch.cat([logprobs, rest], dim=1)
                for k, ((_, n), c) in enumerate(zip(part, conts)):
                    lp = logprobs[k, :len(c)]
                    target = torch.tensor(c, device=lp.device)
                    answer = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
                    results[n] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[n][0], answer)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = [self.tok_encode(req.args[0]) for req in requests]
        totals = [0.0] * len(docs)
        order = sorted((n for n in range(len(docs)) if docs[n]), key=lambda n: -len(docs[n]))
        for a in range(0, len(order), self.batch_size):
            part = order[a:a + self.batch_size]
            width = len(docs[part[0]])
            inputs = torch.zeros(len(part), width, dtype=torch.long)
            targets = torch.zeros(len(part), width, dtype=torch.long)
            valid = torch.zeros(len(part), width, dtype=torch.bool)
            for k, n in enumerate(part):
                doc = docs[n]
                inputs[k, :len(doc)] = torch.tensor([self.prefix_token_id] + doc[:-1])
                targets[k, :len(doc)] = torch.tensor(doc)
                valid[k, :len(doc)] = True
            inputs, targets, valid = inputs.to(self._device), targets.to(self._device), valid.to(self._device)
            state, sums = None, torch.zeros(len(part), dtype=torch.float64, device=self._device)
            for b in range(0, width, self.prefill_chunk_size):  # one chunk of log-probs in memory at a time
                piece = slice(b, b + self.prefill_chunk_size)
                lp, state = self._forward(inputs[:, piece], state)
                picked = lp.gather(-1, targets[:, piece, None])[..., 0]
                sums += torch.where(valid[:, piece], picked, 0.0).double().sum(1)
            for k, n in enumerate(part):
                totals[n] = float(sums[k])
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        eos_text = None if self.eot_token_id is None else self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = kwargs.pop("max_gen_toks")
            sampling = self._sampling(kwargs)
            encoded = {n: self.tok_encode(requests[n].args[0]) or [self.prefix_token_id] for n in members}
            by_context: dict[tuple[int, ...], list[int]] = {}
            for n in members:
                by_context.setdefault(tuple(encoded[n]), []).append(n)
            for batch in self._context_batches(list(by_context)):
                rows = [n for c in batch for n in by_context[c]]
                texts = self._generate([list(c) for c in batch for _ in by_context[c]], until, max_new, sampling)
                for n, text in zip(rows, texts):
                    results[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return results  # type: ignore[return-value]

    @staticmethod
    def _sampling(kwargs: dict) -> dict:
        unknown = sorted(set(kwargs) - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"flashxlstm lm-eval: unsupported generation arguments {unknown}; "
                             f"supported: until, max_gen_toks, {', '.join(sorted(SAMPLING_KEYS))}")
        do_sample = bool(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature") or 1.0)
        top_k, top_p = kwargs.get("top_k") or None, kwargs.get("top_p")
        if do_sample:
            if not math.isfinite(temperature) or temperature <= 0:
                raise ValueError(f"flashxlstm lm-eval: temperature must be a finite number > 0, got {temperature!r}")
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"flashxlstm lm-eval: top_k must be an int >= 1 (0 or None: off), got {top_k!r}")
            if top_p is not None and not 0 < float(top_p) <= 1:
                raise ValueError(f"flashxlstm lm-eval: top_p must be in (0, 1] or None, got {top_p!r}")
        return dict(do_sample=do_sample, temperature=temperature, top_k=top_k,
                    top_p=None if top_p is None else float(top_p))

    def _generate(self, contexts: list[list[int]], until: list[str], max_new: int, sampling: dict) -> list[str]:
        logprobs, state = self._prefill(contexts)
        eos = self.eot_token_id
        new: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        stops = [s for s in until if s]
        for t in range(max_new):
            tokens = next_token(logprobs, **sampling)
            for r, tok in enumerate(tokens.tolist()):
                if done[r]:
                    continue
                if tok == eos:
                    done[r] = True
                    continue
                new[r].append(tok)
                done[r] = any(s in self.tok_decode(new[r]) for s in stops)
            if all(done) or t == max_new - 1:
                break
            logits, state = call(self.model, tokens[:, None], state)
            logprobs = logits[:, -1].float()
        return [postprocess_generated_text(self.tok_decode(ids), until, None) for ids in new]

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `flashxlstm` model registered (this module is imported by now)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
