"""`generate`: autoregressive decoding for any model with the stateful interface (the decode protocol)

    out = model(input_ids, state=None, **options)     # out.logits (B, S, V) and out.state, or a (logits, state) tuple

where options are `attention_mask` and `logits_to_keep` when the model's forward accepts them. Nothing else
of the model is used, so this module imports no model.

The prompt is prefilled with one forward (or several, `prefill_chunk_size` tokens at a time, carrying the
state, so memory stays flat in prompt length), then tokens are decoded one at a time carrying the state.
Per-row EOS stop as in transformers: a finished row is padded with `pad_token_id` (default: the first EOS id)
and generation ends when every row has finished or the length limit is reached. The keyword set and its
defaults: flashxlstm.generation.settings.

Batches of prompts of different lengths: left-pad them and pass `attention_mask` (1 real, 0 padding). The
model must keep padded positions out of its recurrent state (the xLSTM models do), so each row generates
exactly what it would alone.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .sampling import pick, process_logits, sampling_scores
from .settings import resolve_settings


@dataclass
class GenerateOutput:
    """return_dict_in_generate=True: sequences (B, P + T); scores / logits: one (B, V) tensor per generated
    token (processed scores as used for the choice / the model's raw logits) when asked for."""

    sequences: Tensor
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None


def _forward_params(model: torch.nn.Module) -> set[str] | None:
    """Names the model's forward accepts, or None if it takes **kwargs (accepts anything)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _accepts(params: set[str] | None, name: str) -> bool:
    return params is None or name in params


def logits_and_state(out: Any) -> tuple[Tensor, Any]:
    """(logits, state) from a model's output: an object with .logits / .state, or a (logits, state) tuple."""
    if hasattr(out, "logits"):
        return out.logits, out.state
    logits, state = out
    return logits, state


def _check_inputs(input_ids: Any, attention_mask: Tensor | None) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
        got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be an integer tensor of shape (B, P), got {got}")
    if input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"generate: input_ids must hold at least one prompt of at least one token, got shape "
                         f"{tuple(input_ids.shape)}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"generate: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")


def prefill(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
    prefill_chunk_size: int | None = None, state: Any = None,
) -> tuple[Tensor, Any]:
    """Run the prompt through the model; returns the last position's logits (B, V) and the state."""
    params = _forward_params(model)
    kwargs: dict[str, Any] = {}
    if _accepts(params, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    if attention_mask is not None:
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate: the last prompt position is padding in some row; pad prompts on the LEFT")
        if bool(attention_mask.all()):
            attention_mask = None
        elif not _accepts(params, "attention_mask"):
            raise ValueError(
                f"generate: {type(model).__name__} does not accept attention_mask, so padded prompts would leak "
                "into its state; generate rows of different lengths separately"
            )
    P = input_ids.shape[1]
    step = P if not prefill_chunk_size else int(prefill_chunk_size)
    if step < 1:
        raise ValueError(f"generate: prefill_chunk_size must be a positive int or None, got {prefill_chunk_size!r}")
    logits = None
    for a in range(0, P, step):
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask[:, a : a + step]
        logits, state = logits_and_state(model(input_ids[:, a : a + step], state=state, **kwargs))
    return logits[:, -1], state


def _seen_tokens(input_ids: Tensor, attention_mask: Tensor | None, vocab: int) -> Tensor:
    """(B, V) bool: which tokens each row's prompt holds (padding excluded), for the repetition penalty."""
    real = torch.ones_like(input_ids) if attention_mask is None else (attention_mask != 0).long()
    counts = torch.zeros(input_ids.shape[0], vocab, dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids.clamp(0, vocab - 1), real) > 0


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: Tensor,
    max_new_tokens: int | None = None,
    *,
    attention_mask: Tensor | None = None,
    generation_config: Any = None,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    prefill_chunk_size: int | None = None,
    use_cuda_graph: bool = False,
    compile_step: bool = False,
    **kwargs: Any,
) -> Tensor | GenerateOutput:
    """Generate after each prompt; returns (B, P + generated) int64 token ids, or a GenerateOutput with
    return_dict_in_generate=True. Keyword set (transformers' names): flashxlstm.generation.settings.

    streamer: an object with `put(tokens)` and `end()` (transformers' TextStreamer works for B == 1);
    it gets the prompt first, then each new token (B,) as it is chosen.
    use_cuda_graph: decode on static buffers (cuda_graph.StaticDecodeStep), each step one replay of a
    captured CUDA graph on CUDA; on the CPU the same static-buffer step runs eagerly, so the same call works
    on both and gives the same tokens. compile_step: compile that step with torch.compile first.
    A NaN or +inf logit is an error naming the step and rows (the model's weights or inputs are broken).
    """
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    cfg = resolve_settings(generation_config, **kwargs)
    _check_inputs(input_ids, attention_mask)
    device = input_ids.device
    input_ids = input_ids.long()
    most, least = cfg.new_tokens(input_ids.shape[1])
    eos_ids = cfg.eos_ids
    eos = torch.tensor(eos_ids, device=device, dtype=torch.long) if eos_ids else None
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    top_k, top_p = cfg.filters
    scores: list[Tensor] | None = [] if cfg.output_scores else None
    raw: list[Tensor] | None = [] if cfg.output_logits else None

    if streamer is not None:
        streamer.put(input_ids.cpu())
    tokens = [input_ids]
    if most > 0:
        logits, state = prefill(model, input_ids, attention_mask, prefill_chunk_size)
        seen = _seen_tokens(input_ids, attention_mask, logits.shape[-1]) if cfg.repetition_penalty != 1.0 else None
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        runner = None
        for t in range(most):
            logits = logits.float()
            broken = torch.isnan(logits) | (logits == float("inf"))
            if bool(broken.any()):
                rows = broken.any(-1).nonzero().flatten().tolist()
                raise ValueError(f"generate: the model returned NaN or +inf logits at new token {t} in rows {rows}; "
                                 "its weights or inputs hold non-finite values")
            if raw is not None:
                raw.append(logits.clone())  # a CUDA-graph step reuses its logits buffer
            processed = process_logits(logits, seen=seen, repetition_penalty=cfg.repetition_penalty,
                                       banned=eos if t < least else None)
            processed = sampling_scores(processed, do_sample=cfg.do_sample, temperature=cfg.temperature,
                                        top_k=top_k, top_p=top_p)
            tok = pick(processed, do_sample=cfg.do_sample, generator=generator)
            if scores is not None:
                scores.append(processed.clone())
            if eos is not None:
                tok = torch.where(finished, torch.full_like(tok, pad), tok)
                finished = finished | torch.isin(tok, eos)
            if seen is not None:
                seen.scatter_(1, tok[:, None], True)
            tokens.append(tok[:, None])
            if streamer is not None:
                streamer.put(tok.cpu())
            if t == most - 1 or (eos is not None and bool(finished.all())):
                break
            if use_cuda_graph:
                if runner is None:
                    from .cuda_graph import StaticDecodeStep

                    runner = StaticDecodeStep(model, tok[:, None], state, compile=compile_step)
                logits = runner.step(tok[:, None])[:, -1]
            else:
                logits, state = logits_and_state(model(tok[:, None], state=state))
                logits = logits[:, -1]
    if streamer is not None:
        streamer.end()
    sequences = torch.cat(tokens, dim=1)
    if not cfg.return_dict_in_generate:
        return sequences
    return GenerateOutput(sequences, None if scores is None else tuple(scores), None if raw is None else tuple(raw))
