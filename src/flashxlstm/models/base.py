"""What both model families share: the forward output, the language-model loss, HF field names in configs,
and the `xLSTMPreTrainedModel` base with `from_pretrained`, `save_pretrained`, `generate`, `num_parameters`.

    out = model(input_ids, state=None, attention_mask=None, labels=None)
    out.logits (B, S, V), out.state (one typed state per block, see flashxlstm.nn.state), out.loss (labels given)
    logits, state = model(input_ids)                      # the output also unpacks like a tuple (loss first
                                                          # when labels are given; None fields are left out)

The loss is the shifted next-token cross-entropy of transformers' causal LMs: logits at position t score
labels[t + 1]; labels of -100 are ignored, and so is every pair whose position is padding in attention_mask.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import Tensor, nn

IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    """The result of a forward pass: logits (B, S, V), the state after the last token, the loss if labels."""

    logits: Tensor
    state: Any = None
    loss: Tensor | None = None

    def to_tuple(self) -> tuple:
        """(loss, logits, state) without the fields that are None (transformers' return_dict=False order)."""
        return tuple(v for v in (self.loss, self.logits, self.state) if v is not None)

    def __iter__(self):
        return iter(self.to_tuple())

    def __getitem__(self, key: int | str):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __len__(self) -> int:
        return len(self.to_tuple())


# a pytree node, so torch.compile / torch.export see through it
pytree.register_dataclass(CausalLMOutput)


_CHECKED = threading.local()


@contextlib.contextmanager
def inputs_checked():
    """Within this block (on this thread) forward passes skip the host reads that check input values (token
    id range, a 0/1 mask): for a caller that checked them before they reached the device and must not wait
    for the device here (the serving engine queues a prefill behind a decode step without a sync)."""
    before = getattr(_CHECKED, "on", False)
    _CHECKED.on = True
    try:
        yield
    finally:
        _CHECKED.on = before


def can_check_values(t: Tensor) -> bool:
    """Whether reading tensor values on the host is allowed here: not inside a CUDA-graph capture, not while
    torch.compile / torch.export trace the model (value checks are skipped there, shapes still checked), and
    not inside `inputs_checked()`."""
    if torch.compiler.is_compiling() or getattr(_CHECKED, "on", False):
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def causal_lm_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1] over the pairs that count (see module doc)."""
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:2] or labels.is_floating_point():
        got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape {tuple(logits.shape[:2])} (the input ids' "
                         f"shape), got {got}")
    target = labels[:, 1:].long()
    if attention_mask is not None:
        real = attention_mask.bool()
        target = target.masked_fill(~(real[:, 1:] & real[:, :-1]), IGNORE_INDEX)
    V = logits.shape[-1]
    bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= V))
    if can_check_values(logits) and bool(bad.any()):
        raise ValueError(f"labels must be token ids in [0, {V}) or {IGNORE_INDEX} (ignored), got "
                         f"{target[bad][:4].tolist()}")
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, V), target.reshape(-1), ignore_index=IGNORE_INDEX)


def accept_hf_names(aliases: dict[str, str], ignored: tuple[str, ...] = ()):
    """Class decorator for a config dataclass: the constructor also takes transformers' field names.

    aliases: their name -> ours (hidden_size -> embedding_dim, ...); readable as properties too.
    ignored: their fields that have no meaning here (kernel choices of another implementation): accepted, dropped.
    Giving both names with different values is an error.
    """

    def wrap(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            for theirs, ours in aliases.items():
                if theirs in kwargs:
                    value = kwargs.pop(theirs)
                    if value is None:
                        continue
                    if ours in kwargs and kwargs[ours] is not None and kwargs[ours] != value:
                        raise ValueError(f"{cls.__name__}: {ours} = {kwargs[ours]!r} disagrees with {theirs} = {value!r}")
                    kwargs[ours] = value
            for name in ignored:
                kwargs.pop(name, None)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        for theirs, ours in aliases.items():
            setattr(cls, theirs, property(lambda self, _o=ours: getattr(self, _o),
                                          doc=f"transformers' name for {ours}"))
        cls.hf_aliases = dict(aliases)
        return cls

    return wrap


def check_input_ids(name: str, input_ids: Any, vocab_size: int) -> None:
    """input_ids must be an int32/int64 (B, S) tensor with B, S >= 1 and ids in [0, vocab_size)."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"{name}: input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name}: input_ids must be int64 or int32 token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"{name}: input_ids must have shape (B, S) with B >= 1 sequences of S >= 1 tokens, "
                         f"got {tuple(input_ids.shape)}")
    if torch.compiler.is_compiling():  # no host sync in a traced graph: the check runs on the device
        torch._assert_async(((input_ids >= 0) & (input_ids < vocab_size)).all(),
                            f"{name}: token ids must lie in [0, {vocab_size})")
    elif can_check_values(input_ids):  # not inside a CUDA-graph capture
        lo, hi = torch.aminmax(input_ids)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}) (the vocabulary), got values in "
                             f"[{lo}, {hi}]")


def check_attention_mask(name: str, attention_mask: Any, input_ids: Tensor) -> Tensor | None:
    """None, or a (B, S) mask of 0/1 (bool or numbers) shaped like input_ids; returns it as bool, or None when
    every position is real (nothing to mask)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"{name}: attention_mask must have the shape of input_ids {tuple(input_ids.shape)} "
                         f"(1 real token, 0 padding), got {got}")
    if not can_check_values(input_ids):
        return attention_mask.bool()
    if attention_mask.dtype != torch.bool and bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError(f"{name}: attention_mask must hold only 0 (padding) and 1 (real token)")
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


class xLSTMPreTrainedModel(nn.Module):
    """Base of xLSTMLM and xLSTMLarge: loading, saving, generating and counting, alike for both families.

    A subclass sets `config_class` and implements `forward`, `initial_state` and `_save(path, **kwargs)`.
    """

    config_class: type = type(None)
    main_input_name = "input_ids"

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype: torch.dtype | str | None = None, device=None,
                        **kwargs) -> "xLSTMPreTrainedModel":
        """Load a checkpoint directory or a Hugging Face hub id (cached, or downloaded when online) in eval mode.

        dtype: parameter dtype or its name (default: as stored); device: default CPU. Other keyword arguments
        are config overrides (7B family: weight_mode=..., backend=...). Calling it on this base class or on
        the wrong family's class: the checkpoint decides (a class mismatch is an error on a subclass).
        """
        from .auto import from_pretrained

        model = from_pretrained(path_or_hub_id, dtype=dtype, device=device, **kwargs)
        if cls is not xLSTMPreTrainedModel and not isinstance(model, cls):
            raise TypeError(f"{cls.__name__}.from_pretrained: {path_or_hub_id} holds a {type(model).__name__} "
                            f"checkpoint; use flashxlstm.from_pretrained or {type(model).__name__}.from_pretrained")
        return model

    def save_pretrained(self, path: str | os.PathLike, **kwargs) -> None:
        """Write a checkpoint directory that `from_pretrained` reads (atomic: a crash keeps the previous one)."""
        self._save(path, **kwargs)

    def _save(self, path, **kwargs) -> None:
        raise NotImplementedError

    def generate(self, input_ids: Tensor | None = None, max_new_tokens: int | None = None, *,
                 generation_config: Any = None, **kwargs) -> Any:
        """transformers-style generation; see flashxlstm.generation.generate for every argument
        (generation_config is keyword-only; the second positional argument is max_new_tokens).

        Defaults taken from the config: eos_token_id (generation stops at it, as in transformers) and
        pad_token_id. On CUDA the decode step runs as a captured CUDA graph (use_cuda_graph=False: eager).
        """
        from ..generation import generate

        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        for name in ("eos_token_id", "pad_token_id"):
            if name not in kwargs and getattr(generation_config, name, None) is None and not (
                    isinstance(generation_config, dict) and generation_config.get(name) is not None):
                kwargs[name] = getattr(self.config, name, None)
        if "use_cuda_graph" not in kwargs:
            kwargs["use_cuda_graph"] = isinstance(input_ids, Tensor) and input_ids.is_cuda
        return generate(self, input_ids, generation_config=generation_config, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied head counted once), as transformers counts them."""
        seen, total = set(), 0
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for p in self.parameters():
            if id(p) in seen or id(p) in skip or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def _finish_forward(self, logits: Tensor, state: Any, labels: Tensor | None, attention_mask: Tensor | None,
                        return_dict: bool | None, use_cache: bool | None):
        loss = None if labels is None else causal_lm_loss(logits, labels, attention_mask)
        out = CausalLMOutput(logits=logits, state=state if use_cache is not False else None, loss=loss)
        return out.to_tuple() if return_dict is False else out


def check_token_type_ids(name: str, token_type_ids: Any) -> None:
    """Tokenizers may return token_type_ids; a causal LM has one segment, so they must be all zero."""
    if isinstance(token_type_ids, Tensor) and can_check_values(token_type_ids) and bool(token_type_ids.any()):
        raise ValueError(f"{name}: token_type_ids must be all 0 (a causal language model has one segment)")
