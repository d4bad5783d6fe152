"""The NeurIPS xLSTM language model: config, block stack and LM, stateful over any sequence length.

    cfg = xLSTMLMConfig(vocab_size=256, embedding_dim=128, num_blocks=2, slstm_at="xlstm[1:1]")
    model = xLSTMLM(cfg)                          # official initialisation
    out = model(input_ids, state=None)            # (B, S) ids -> out.logits (B, S, V), out.state for the next call
    out = model(input_ids, labels=input_ids)      # out.loss: shifted next-token cross-entropy
    y, state = model.stack(x, state=None)         # the xLSTMBlockStack alone: (B, S, D) -> (B, S, D)

The state is a tuple with one typed entry per block (flashxlstm.nn.state): mLSTMLayerState(conv, C, n, m)
for mLSTM blocks, sLSTMLayerState(conv, c, n, m, h) for sLSTM blocks. Feeding a sequence in pieces and
carrying the state gives the one-pass result. `attention_mask` (B, S), 0 at padding: padded positions do not
exist for the model (their logits are 0, they touch no state), wherever they are; rows with the same number
of real tokens run together. Field names follow the official `xlstm` configs, flattened (mlstm_* for the
mLSTM layer, slstm_* for the sLSTM layer, ffn_* for the sLSTM block's feed-forward); transformers' names
(hidden_size, num_hidden_layers, tie_word_embeddings) are accepted too. There is no context length.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import native
from ..checkpoints.pretrained import as_dtype
from ..nn.blocks import mLSTMBlock, sLSTMBlock
from ..nn.checks import check_sequence_input, check_state
from ..nn.feedforward import ACTIVATIONS, GatedFeedForward, up_proj_dim
from ..nn.init import small_init_
from ..nn.norms import OffsetLayerNorm
from ..nn.slstm_layer import BIAS_INITS, RECURRENT_INITS
from ..nn.state import merge_rows, select_rows
from .base import (CausalLMOutput, accept_hf_names, check_attention_mask, check_input_ids, check_token_type_ids,
                   xLSTMPreTrainedModel)

_RATIO = re.compile(r"^\s*xlstm\s*\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*$", re.IGNORECASE)


def slstm_positions(ratio: str, num_blocks: int) -> list[int]:
    """Block indices of the sLSTM blocks for "xLSTM[a:b]" (a mLSTM to b sLSTM blocks), spread evenly.

    Block j is sLSTM when floor((j + 1) b / (a + b)) > floor(j b / (a + b)), so each period ends with its
    sLSTM blocks: xlstm[1:1] over 2 blocks -> [1], over 4 -> [1, 3]; xlstm[7:1] over 8 -> [7];
    xlstm[1:0] -> []; xlstm[0:1] -> every block.
    """
    match = _RATIO.match(ratio) if isinstance(ratio, str) else None
    if match is None:
        raise ValueError(f"slstm ratio must look like 'xLSTM[a:b]' (a mLSTM : b sLSTM blocks), got {ratio!r}")
    a, b = int(match[1]), int(match[2])
    if a + b == 0:
        raise ValueError(f"slstm ratio {ratio!r}: a and b cannot both be 0")
    return [j for j in range(num_blocks) if ((j + 1) * b) // (a + b) > (j * b) // (a + b)]


@accept_hf_names({"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks",
                  "tie_word_embeddings": "tie_weights"})
@dataclass
class xLSTMLMConfig:
    vocab_size: int | None = None  # required by xLSTMLM, unused by the stack alone
    embedding_dim: int = 128
    num_blocks: int = 2
    slstm_at: list[int] | str = field(default_factory=list)  # indices, "all", or "xLSTM[a:b]"
    add_post_blocks_norm: bool = True
    bias: bool = False
    dropout: float = 0.0
    tie_weights: bool = False
    add_embedding_dropout: bool = False
    weight_decay_on_embedding: bool = False
    round_proj_up_to_multiple_of: int = 64
    # mLSTM layer
    mlstm_num_heads: int = 4
    mlstm_proj_factor: float = 2.0
    mlstm_conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    mlstm_backend: str = "auto"
    mlstm_chunk_size: int = 64
    # sLSTM layer
    slstm_num_heads: int = 4
    slstm_conv1d_kernel_size: int = 4
    slstm_bias_init: str = "powerlaw_blockdependent"
    slstm_recurrent_weight_init: str = "zeros"
    slstm_forget_gate: str = "sigmoid"
    slstm_backend: str = "auto"
    # the gated feed-forward of sLSTM blocks
    slstm_ffn: bool = True
    ffn_proj_factor: float = 1.3
    ffn_act_fn: str = "gelu"
    ffn_bias: bool = False
    ffn_dropout: float = 0.0
    # special tokens (a byte-level model has none): generate stops at eos_token_id and pads with pad_token_id
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ValueError(f"xLSTMLMConfig: {name} must be a {'non-negative' if allow_zero else 'positive'} int, got {v!r}")

        if self.vocab_size is not None:
            positive_int("vocab_size")
        for name in ("embedding_dim", "num_blocks", "round_proj_up_to_multiple_of", "mlstm_num_heads",
                     "qkv_proj_blocksize", "mlstm_chunk_size", "slstm_num_heads"):
            positive_int(name)
        for name in ("mlstm_conv1d_kernel_size", "slstm_conv1d_kernel_size"):
            positive_int(name, allow_zero=True)
        for name in ("dropout", "ffn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"xLSTMLMConfig: {name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("mlstm_proj_factor", "ffn_proj_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"xLSTMLMConfig: {name} must be positive, got {getattr(self, name)!r}")
        self.slstm_at = self._normalise_slstm_at(self.slstm_at)
        if self.slstm_bias_init not in BIAS_INITS:
            raise ValueError(f"xLSTMLMConfig: slstm_bias_init must be one of {BIAS_INITS}, got {self.slstm_bias_init!r}")
        if self.slstm_recurrent_weight_init not in RECURRENT_INITS:
            raise ValueError(f"xLSTMLMConfig: slstm_recurrent_weight_init must be one of {RECURRENT_INITS}, "
                             f"got {self.slstm_recurrent_weight_init!r}")
        if self.slstm_forget_gate not in ("sigmoid", "exp"):
            raise ValueError(f"xLSTMLMConfig: slstm_forget_gate must be 'sigmoid' or 'exp', got {self.slstm_forget_gate!r}")
        if self.ffn_act_fn not in ACTIVATIONS:
            raise ValueError(f"xLSTMLMConfig: ffn_act_fn must be one of {sorted(ACTIVATIONS)}, got {self.ffn_act_fn!r}")
        if len(self.slstm_at) < self.num_blocks:  # there are mLSTM blocks
            inner = self.mlstm_inner_dim
            for name in ("mlstm_num_heads", "qkv_proj_blocksize"):
                if inner % getattr(self, name):
                    raise ValueError(
                        f"xLSTMLMConfig: the mLSTM inner dim {inner} (ceil({self.mlstm_proj_factor} x embedding_dim "
                        f"{self.embedding_dim} / {self.round_proj_up_to_multiple_of}) x {self.round_proj_up_to_multiple_of}) "
                        f"is not divisible by {name} {getattr(self, name)}")
        if self.slstm_at and self.embedding_dim % self.slstm_num_heads:
            raise ValueError(f"xLSTMLMConfig: embedding_dim {self.embedding_dim} is not divisible by "
                             f"slstm_num_heads {self.slstm_num_heads}")

    def _normalise_slstm_at(self, at: Any) -> list[int]:
        if isinstance(at, str):
            if at == "all":
                return list(range(self.num_blocks))
            return slstm_positions(at, self.num_blocks)
        if not isinstance(at, (list, tuple)) or not all(isinstance(j, int) and not isinstance(j, bool) for j in at):
            raise ValueError(f"xLSTMLMConfig: slstm_at must be a list of block indices, 'all' or 'xLSTM[a:b]', got {at!r}")
        bad = [j for j in at if not 0 <= j < self.num_blocks]
        if bad:
            raise ValueError(f"xLSTMLMConfig: slstm_at {list(at)} has indices {bad} outside 0..{self.num_blocks - 1} "
                             f"(num_blocks = {self.num_blocks})")
        if len(set(at)) != len(at):
            raise ValueError(f"xLSTMLMConfig: slstm_at {list(at)} repeats an index")
        return sorted(at)

    @property
    def mlstm_inner_dim(self) -> int:
        return up_proj_dim(self.embedding_dim, self.mlstm_proj_factor, self.round_proj_up_to_multiple_of)

    @property
    def ffn_inner_dim(self) -> int:
        return up_proj_dim(self.embedding_dim, self.ffn_proj_factor, self.round_proj_up_to_multiple_of)

    @property
    def block_types(self) -> list[str]:
        return ["slstm" if j in self.slstm_at else "mlstm" for j in range(self.num_blocks)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "xLSTMLMConfig":
        if not isinstance(d, dict):
            raise TypeError(f"xLSTMLMConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} | set(cls.hf_aliases)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"xLSTMLMConfig.from_dict: unknown keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


def _make_block(cfg: xLSTMLMConfig, idx: int) -> nn.Module:
    if idx in cfg.slstm_at:
        ffn = None
        if cfg.slstm_ffn:
            ffn = GatedFeedForward(cfg.embedding_dim, cfg.ffn_inner_dim, act_fn=cfg.ffn_act_fn, bias=cfg.ffn_bias,
                                   dropout=cfg.ffn_dropout, num_blocks=cfg.num_blocks)
        return sLSTMBlock(
            cfg.embedding_dim, ffn=ffn, num_heads=cfg.slstm_num_heads, conv1d_kernel_size=cfg.slstm_conv1d_kernel_size,
            dropout=cfg.dropout, block_idx=idx, num_blocks=cfg.num_blocks, bias_init=cfg.slstm_bias_init,
            recurrent_weight_init=cfg.slstm_recurrent_weight_init, backend=cfg.slstm_backend,
            forget_gate=cfg.slstm_forget_gate,
        )
    return mLSTMBlock(
        cfg.embedding_dim, num_heads=cfg.mlstm_num_heads, proj_factor=cfg.mlstm_proj_factor,
        conv1d_kernel_size=cfg.mlstm_conv1d_kernel_size, qkv_proj_blocksize=cfg.qkv_proj_blocksize, bias=cfg.bias,
        dropout=cfg.dropout, num_blocks=cfg.num_blocks, round_proj_up_to_multiple_of=cfg.round_proj_up_to_multiple_of,
        backend=cfg.mlstm_backend, chunk_size=cfg.mlstm_chunk_size,
    )


class xLSTMBlockStack(nn.Module):
    """The residual stack of mLSTM and sLSTM blocks plus the post-blocks norm: (B, S, D) -> (B, S, D)."""

    def __init__(self, config: xLSTMLMConfig):
        super().__init__()
        if not isinstance(config, xLSTMLMConfig):
            raise TypeError(f"xLSTMBlockStack: config must be an xLSTMLMConfig, got {type(config).__name__}")
        self.config = config
        self.blocks = nn.ModuleList(_make_block(config, j) for j in range(config.num_blocks))
        self.post_blocks_norm = OffsetLayerNorm(config.embedding_dim) if config.add_post_blocks_norm else None

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.reset_parameters()
        if self.post_blocks_norm is not None:
            self.post_blocks_norm.reset_parameters()

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> tuple:
        """The state of a model that has seen nothing (what state=None means)."""
        return tuple(block.initial_state(batch_size, device, dtype) for block in self.blocks)

    def check_state(self, state: Any, batch_size: int) -> None:
        """A clear error unless `state` is one (None or typed) state per block for `batch_size` rows."""
        if not isinstance(state, (tuple, list)) or len(state) != len(self.blocks):
            got = f"{type(state).__name__} of length {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(f"xLSTMBlockStack: state must be a tuple with one entry per block "
                             f"({len(self.blocks)}: {self.config.block_types}), got {got}")
        for j, (block, st) in enumerate(zip(self.blocks, state)):
            if st is not None:
                check_state(f"xLSTMBlockStack: block {j} ({block.kind})", st, block.layer.state_fields,
                            block.layer.state_shapes(batch_size))

    def forward(self, x: Tensor, state: tuple | None = None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, tuple]:
        """cu_seqlens: packed documents in (B, S) rows, each from an empty state (nn/packing.py)."""
        check_sequence_input("xLSTMBlockStack", x, self.config.embedding_dim)
        if state is None:
            state = (None,) * len(self.blocks)
        else:
            self.check_state(state, x.shape[0])
        new_state = []
        for block, st in zip(self.blocks, state):
            x, st = block(x, st, cu_seqlens=cu_seqlens) if cu_seqlens is not None else block(x, st)
            new_state.append(st)
        if self.post_blocks_norm is not None:
            x = self.post_blocks_norm(x)
        return x, tuple(new_state)


class xLSTMLM(xLSTMPreTrainedModel):
    """Token embedding, xLSTMBlockStack, lm_head (optionally tied to the embedding)."""

    config_class = xLSTMLMConfig
    model_type = native.NEURIPS_MODEL_TYPE

    def __init__(self, config: xLSTMLMConfig):
        super().__init__()
        if not isinstance(config, xLSTMLMConfig):
            raise TypeError(f"xLSTMLM: config must be an xLSTMLMConfig, got {type(config).__name__}")
        if config.vocab_size is None:
            raise ValueError("xLSTMLM: config.vocab_size must be set")
        self.config = config
        self.stack = xLSTMBlockStack(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.emb_dropout = nn.Dropout(config.dropout) if config.add_embedding_dropout else nn.Identity()
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation (docs/models.md)."""
        self.stack.reset_parameters()
        small_init_(self.token_embedding.weight, self.config.embedding_dim)
        if not self.config.tie_weights:
            small_init_(self.lm_head.weight, self.config.embedding_dim)

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> tuple:
        return self.stack.initial_state(batch_size, device, dtype)

    def forward(
        self, input_ids: Tensor, state: tuple | None = None, attention_mask: Tensor | None = None,
        labels: Tensor | None = None, *, logits_to_keep: int = 0, return_dict: bool | None = None,
        use_cache: bool | None = None, token_type_ids: Tensor | None = None, cu_seqlens: Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, S) integer -> output with logits (B, S, V) (the last `logits_to_keep` positions if > 0),
        the state after the last token and, with labels, the loss (see flashxlstm.models.base).
        return_dict=False gives the tuple (loss, logits, state) without None entries; use_cache=False leaves
        the state out. cu_seqlens: packed documents in (B, S) rows (offsets over the flattened tokens, every row
        starting a document), each from an empty state (nn/packing.py)."""
        check_input_ids("xLSTMLM", input_ids, self.config.vocab_size)
        check_token_type_ids("xLSTMLM", token_type_ids)
        mask = check_attention_mask("xLSTMLM", attention_mask, input_ids)
        if labels is not None and logits_to_keep:
            raise ValueError("xLSTMLM: labels need the logits of every position; do not pass logits_to_keep")
        if cu_seqlens is not None and mask is not None:
            raise ValueError("xLSTMLM: pass cu_seqlens (packed documents) or attention_mask (padding), not both")
        x = self.emb_dropout(self.token_embedding(input_ids))
        x, state = self.stack(x, state, cu_seqlens=cu_seqlens) if mask is None else self._stack_masked(x, state, mask)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self._finish_forward(self.lm_head(x), state, labels, mask, return_dict, use_cache)

    def _stack_masked(self, x: Tensor, state: tuple | None, mask: Tensor) -> tuple[Tensor, tuple]:
        """The stack over the real positions of each row only: rows with the same number of real tokens are
        gathered (in order) into one batch, run from their own state and scattered back; padding gets 0."""
        B, S, D = x.shape
        if state is None:
            state = self.initial_state(B, x.device, x.dtype)
        else:
            self.stack.check_state(state, B)
            state = tuple(self.stack.blocks[j].initial_state(B, x.device, x.dtype) if st is None else st
                          for j, st in enumerate(state))
        counts = mask.sum(dim=1)
        out = x.new_zeros(B, S, D)
        for n in counts.unique().tolist():
            if n == 0:  # a row of padding only: no output, state unchanged
                continue
            rows = (counts == n).nonzero().squeeze(1)
            r_idx, t_idx = mask[rows].nonzero(as_tuple=True)  # row-major: each row's real positions in order
            y, rows_state = self.stack(x[rows[r_idx], t_idx].view(len(rows), n, D), select_rows(state, rows))
            out = out.index_put((rows[r_idx], t_idx), y.reshape(-1, D))
            state = merge_rows(state, rows_state, rows)
        return out, state

    def _save(self, path, **kwargs) -> None:
        if kwargs:
            raise TypeError(f"xLSTMLM.save_pretrained: unexpected arguments {sorted(kwargs)}")
        native.save_model(self, path)

    @classmethod
    def load_checkpoint(cls, directory, dtype: torch.dtype | str | None = None, device=None) -> "xLSTMLM":
        """Build the model a flashxlstm checkpoint directory describes and load its weights (eval mode)."""
        path = native.checked_checkpoint_dir(directory)
        try:
            config = xLSTMLMConfig.from_dict(native.config_fields(native.read_config(path)))
        except (TypeError, KeyError) as e:
            raise ValueError(f"inconsistent model config in {native.CONFIG_NAME}: {e}") from None
        except ValueError as e:
            if "model_type" in str(e):
                raise
            raise ValueError(f"inconsistent model config in {native.CONFIG_NAME}: {e}") from None
        weights = native.read_weights(path / native.WEIGHTS_NAME)
        model = cls(config)
        native.load_state_into(model, weights, f"{path / native.WEIGHTS_NAME}")
        dtype = as_dtype(dtype)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model.eval()

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as in the paper: decay on weight matrices only, not on norms, biases or the embedding."""
        decay, no_decay = [], []
        emb = self.token_embedding.weight
        for name, p in self.named_parameters():  # a tied lm_head appears once, as the embedding
            if not p.requires_grad:
                continue
            if p is emb:
                (decay if self.config.weight_decay_on_embedding else no_decay).append(p)
            elif "weight" in name and "norm" not in name:
                decay.append(p)
            else:
                no_decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
