"""The one place the integrations touch a model's call convention and its state layout.

`call(model, input_ids, state, attention_mask)` returns (logits, state) whether the model's forward returns a
tuple or an output object with `.logits` / `.state`; `initial_state(model, batch_size)` is the state of a model
that has seen nothing; `take_rows` picks batch rows of a state (every state tensor is batch-first).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..nn.state import map_state


def accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward takes a keyword argument `name`."""
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call(model: torch.nn.Module, input_ids: Tensor, state: Any = None,
         attention_mask: Tensor | None = None) -> tuple[Tensor, Any]:
    """One forward: input_ids (B, S) -> logits (B, S, V), the state after the last position."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    out = model(input_ids, state=state, **kwargs)
    if isinstance(out, tuple) and not hasattr(out, "logits"):
        return out[0], out[1]
    return out.logits, out.state


def initial_state(model: torch.nn.Module, batch_size: int, device=None) -> Any:
    """The state a forward with state=None starts from, as explicit tensors."""
    param = next(model.parameters())
    device = param.device if device is None else device
    if hasattr(model, "initial_state"):
        return model.initial_state(batch_size, device=device, dtype=param.dtype)
    # the 7B family starts from zeros (C = n = 0, m = 0): see ops.mlstm_cell.recurrent.zero_state
    c = model.config
    nh, dqk, dv = c.num_heads, c.qk_head_dim_total // c.num_heads, c.v_head_dim_total // c.num_heads
    zeros = lambda *shape: torch.zeros(batch_size, *shape, device=device, dtype=torch.float32)
    return tuple((zeros(nh, dqk, dv), zeros(nh, dqk), zeros(nh)) for _ in range(c.num_blocks))


def take_rows(state: Any, rows: Tensor) -> Any:
    """The state of batch rows `rows` (an index tensor; repeated indices clone a row)."""
    return map_state(lambda t: t.index_select(0, rows), state)
