"""`generate`: autoregressive decoding for any model with the stateful interface.

    logits, state = model(input_ids, state=None)

The prompt is prefilled with one forward (or several, `prefill_chunk_size` tokens at a time, carrying the
state, so memory stays flat in prompt length), then tokens are decoded one at a time carrying the state.
Only the last position's logits are used; a model whose forward accepts `logits_to_keep` is asked for just
that position. Per-sequence EOS stop: a finished row is padded with `pad_token_id` (default: the first EOS
id) and generation ends when every row has finished or `max_new_tokens` is reached.

Batches of prompts of different lengths: left-pad them and pass `attention_mask` (1 real, 0 padding). The
model must accept `attention_mask` and keep padded positions out of its recurrent state (the xLSTM models
do, by masking the gates), so each row generates exactly what it would alone.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import Tensor

from .sampling import check_sampling_args, next_token


def _forward_params(model: torch.nn.Module) -> set[str] | None:
    """Names the model's forward accepts, or None if it takes **kwargs (accepts anything)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _accepts(params: set[str] | None, name: str) -> bool:
    return params is None or name in params


def _check_inputs(input_ids: Any, max_new_tokens: Any, attention_mask: Tensor | None) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int32, torch.int64):
        got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be an integer tensor of shape (B, P) with P >= 1, got {got}")
    if input_ids.shape[1] < 1:
        raise ValueError("generate: the prompt must hold at least one token (P >= 1)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"generate: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")


def _eos_tensor(eos_token_id: int | Sequence[int] | None, device) -> Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"generate: eos_token_id must be an int or a non-empty list of ints, got {eos_token_id!r}")
    return torch.tensor(ids, device=device, dtype=torch.long)


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
        logits, state = model(input_ids[:, a : a + step], state=state, **kwargs)
    return logits[:, -1], state


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    prefill_chunk_size: int | None = None,
    use_cuda_graph: bool = False,
    compile_step: bool = False,
) -> Tensor:
    """Generate up to `max_new_tokens` after each prompt; returns (B, P + generated) int64 token ids.

    streamer: an object with `put(tokens)` and `end()` (transformers' TextStreamer works for B == 1);
    it gets the prompt first, then each new token (B,) as it is chosen.
    use_cuda_graph: decode on static buffers (cuda_graph.StaticDecodeStep), each step one replay of a
    captured CUDA graph on CUDA; on the CPU the same static-buffer step runs eagerly, so the same call works
    on both and gives the same tokens. compile_step: compile that step with torch.compile first.
    """
    _check_inputs(input_ids, max_new_tokens, attention_mask)
    check_sampling_args(temperature, top_k, top_p)
    device = input_ids.device
    input_ids = input_ids.long()
    eos = _eos_tensor(eos_token_id, device)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    sample = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    if streamer is not None:
        streamer.put(input_ids.cpu())
    tokens = [input_ids]
    if max_new_tokens > 0:
        logits, state = prefill(model, input_ids, attention_mask, prefill_chunk_size)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        runner = None
        for t in range(max_new_tokens):
            tok = next_token(logits.float(), **sample)
            if eos is not None:
                tok = torch.where(finished, torch.full_like(tok, pad), tok)
                finished = finished | torch.isin(tok, eos)
            tokens.append(tok[:, None])
            if streamer is not None:
                streamer.put(tok.cpu())
            if t == max_new_tokens - 1 or (eos is not None and bool(finished.all())):
                break
            if use_cuda_graph:
                if runner is None:
                    from .cuda_graph import StaticDecodeStep

                    runner = StaticDecodeStep(model, tok[:, None], state, compile=compile_step)
                logits = runner.step(tok[:, None])[:, -1]
            else:
                logits, state = model(tok[:, None], state=state)
                logits = logits[:, -1]
    if streamer is not None:
        streamer.end()
    return torch.cat(tokens, dim=1)
