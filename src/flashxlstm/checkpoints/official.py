"""The official `xlstm` package's (2.0.6, NeurIPS family) configs and state dicts <-> ours, as dicts.

    fields, layout = config_from_official(official_config)          # our xLSTMLMConfig's fields, sLSTM layout
    ours = state_dict_from_official(sd, config, layout, lm=True)     # official keys/layouts -> ours
    sd = state_dict_to_official(ours, config, layout, lm=True)       # and back
    official_config = config_to_official(config, slstm_backend="vanilla")

The models are built from these in flashxlstm.models.official (from_official / to_official); this module
imports no model (a config here is anything with our config's fields and properties).

What the conversion has to know (docs/models.md):
- The official sLSTM layer calls the module producing the input gate `fgate` and the forget gate `igate`.
- The official sLSTM cell stores its recurrent matrix and bias in a backend-specific layout: "vanilla"
  R (NH, 4 DH_out, DH_in), bias gate-major (4, NH, DH); "cuda" R (NH, DH_in, 4 DH_out), bias head-major
  (NH, 4, DH), both flattened alike, so the config's `backend` field says which one a checkpoint holds.
- Norm weights are offsets (effective 1 + w) on both sides: copied unchanged.
- The official conv weight is (D, 1, K); ours is (D, K).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor

from ..nn.feedforward import up_proj_dim

SLSTM_LAYOUTS = ("vanilla", "cuda")


# --------------------------------------------------------------------------------------------- sLSTM layouts
def slstm_recurrent_from_official(r: Tensor, layout: str, num_heads: int) -> Tensor:
    """Official `_recurrent_kernel_` -> ours (4, NH, DH, DH) with raw[g, h, j] += R[g, h, j, p] h_prev[h, p]."""
    NH = num_heads
    if layout not in SLSTM_LAYOUTS:
        raise ValueError(f"unknown official sLSTM layout {layout!r}; expected one of {SLSTM_LAYOUTS}")
    DH = r.shape[-1] if layout == "vanilla" else r.shape[1]
    want = (NH, 4 * DH, DH) if layout == "vanilla" else (NH, DH, 4 * DH)
    if tuple(r.shape) != want:
        raise ValueError(f"from_official: sLSTM recurrent kernel of shape {tuple(r.shape)} is not in the official "
                         f"{layout!r} layout (expected {want}); does the config's sLSTM backend match the checkpoint?")
    if layout == "vanilla":  # (NH, 4 * DH_out, DH_in)
        return r.reshape(NH, 4, DH, DH).permute(1, 0, 2, 3).contiguous()
    return r.reshape(NH, DH, 4, DH).permute(2, 0, 3, 1).contiguous()  # cuda: (NH, DH_in, 4 * DH_out)


def slstm_recurrent_to_official(r: Tensor, layout: str) -> Tensor:
    _, NH, DH, _ = r.shape
    if layout == "vanilla":
        return r.permute(1, 0, 2, 3).reshape(NH, 4 * DH, DH).contiguous()
    if layout == "cuda":
        return r.permute(1, 3, 0, 2).reshape(NH, DH, 4 * DH).contiguous()
    raise ValueError(f"unknown official sLSTM layout {layout!r}; expected one of {SLSTM_LAYOUTS}")


def slstm_bias_from_official(b: Tensor, layout: str, num_heads: int) -> Tensor:
    """Official flat `_bias_` -> ours (4, NH, DH), gate order (i, f, z, o)."""
    DH = b.numel() // (4 * num_heads)
    if layout == "vanilla":
        return b.reshape(4, num_heads, DH).contiguous()
    if layout == "cuda":
        return b.reshape(num_heads, 4, DH).permute(1, 0, 2).contiguous()
    raise ValueError(f"unknown official sLSTM layout {layout!r}; expected one of {SLSTM_LAYOUTS}")


def slstm_bias_to_official(b: Tensor, layout: str) -> Tensor:
    if layout == "vanilla":
        return b.reshape(-1).contiguous()
    if layout == "cuda":
        return b.permute(1, 0, 2).reshape(-1).contiguous()
    raise ValueError(f"unknown official sLSTM layout {layout!r}; expected one of {SLSTM_LAYOUTS}")


# --------------------------------------------------------------------------------------------- key tables
# (official key suffix, our key suffix) inside one block; weights copied unchanged unless transformed below.
_MLSTM_KEYS = [
    ("xlstm_norm.weight", "norm.weight"),
    ("xlstm.learnable_skip", "layer.learnable_skip"),
    ("xlstm.proj_up.weight", "layer.proj_up.weight"), ("xlstm.proj_up.bias", "layer.proj_up.bias"),
    ("xlstm.q_proj.weight", "layer.q_proj.weight"), ("xlstm.q_proj.bias", "layer.q_proj.bias"),
    ("xlstm.k_proj.weight", "layer.k_proj.weight"), ("xlstm.k_proj.bias", "layer.k_proj.bias"),
    ("xlstm.v_proj.weight", "layer.v_proj.weight"), ("xlstm.v_proj.bias", "layer.v_proj.bias"),
    ("xlstm.conv1d.conv.weight", "layer.conv.weight"), ("xlstm.conv1d.conv.bias", "layer.conv.bias"),
    ("xlstm.mlstm_cell.igate.weight", "layer.igate.weight"), ("xlstm.mlstm_cell.igate.bias", "layer.igate.bias"),
    ("xlstm.mlstm_cell.fgate.weight", "layer.fgate.weight"), ("xlstm.mlstm_cell.fgate.bias", "layer.fgate.bias"),
    ("xlstm.mlstm_cell.outnorm.weight", "layer.outnorm.weight"),
    ("xlstm.proj_down.weight", "layer.proj_down.weight"), ("xlstm.proj_down.bias", "layer.proj_down.bias"),
]
_SLSTM_KEYS = [
    ("xlstm_norm.weight", "norm.weight"),
    ("xlstm.conv1d.conv.weight", "layer.conv.weight"), ("xlstm.conv1d.conv.bias", "layer.conv.bias"),
    ("xlstm.fgate.weight", "layer.igate.weight"),  # the official name swap: its `fgate` is the input gate
    ("xlstm.igate.weight", "layer.fgate.weight"),
    ("xlstm.zgate.weight", "layer.zgate.weight"),
    ("xlstm.ogate.weight", "layer.ogate.weight"),
    ("xlstm.slstm_cell._recurrent_kernel_", "layer.recurrent_kernel"),
    ("xlstm.slstm_cell._bias_", "layer.bias"),
    ("xlstm.group_norm.weight", "layer.norm.weight"),
    ("ffn_norm.weight", "ffn_norm.weight"),
    ("ffn.proj_up.weight", "ffn.proj_up.weight"), ("ffn.proj_up.bias", "ffn.proj_up.bias"),
    ("ffn.proj_down.weight", "ffn.proj_down.weight"), ("ffn.proj_down.bias", "ffn.proj_down.bias"),
]


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if cfg is None:
            return default
        cfg = getattr(cfg, part, None)
    return default if cfg is None else cfg


# --------------------------------------------------------------------------------------------- configs
def _official_width(layer_cfg: Any, dim: int) -> int:
    """The official UpProjConfigMixin rule: proj_factor * dim rounded (up or down) to a multiple."""
    q = layer_cfg.proj_factor * dim / layer_cfg.round_proj_up_to_multiple_of
    q = math.ceil(q) if layer_cfg.round_proj_up_dim_up else math.floor(q)
    return int(q * layer_cfg.round_proj_up_to_multiple_of)


def config_from_official(off: Any) -> tuple[dict[str, Any], str]:
    """An official xLSTMBlockStackConfig / xLSTMLMModelConfig -> (our config's fields, the sLSTM layout its
    weights use)."""
    if not hasattr(off, "num_blocks") or not hasattr(off, "embedding_dim"):
        raise TypeError(f"from_official: expected an official xLSTMLMModelConfig or xLSTMBlockStackConfig, "
                        f"got {type(off).__name__}")
    m = _get(off, "mlstm_block.mlstm")
    s = _get(off, "slstm_block.slstm")
    ffn = _get(off, "slstm_block.feedforward")
    slstm_at = list(off.slstm_at) if off.mlstm_block is not None else list(range(off.num_blocks))
    kw: dict[str, Any] = dict(
        embedding_dim=off.embedding_dim, num_blocks=off.num_blocks, slstm_at=slstm_at,
        add_post_blocks_norm=off.add_post_blocks_norm, bias=off.bias, dropout=off.dropout,
    )
    if hasattr(off, "vocab_size"):
        kw.update(vocab_size=off.vocab_size, tie_weights=off.tie_weights,
                  add_embedding_dropout=off.add_embedding_dropout,
                  weight_decay_on_embedding=off.weight_decay_on_embedding)
    rounding = set()
    if m is not None and len(slstm_at) < off.num_blocks:
        kw.update(mlstm_num_heads=m.num_heads, mlstm_proj_factor=m.proj_factor,
                  mlstm_conv1d_kernel_size=m.conv1d_kernel_size, qkv_proj_blocksize=m.qkv_proj_blocksize)
        rounding.add(m.round_proj_up_to_multiple_of)
    layout = "vanilla"
    if s is not None and slstm_at:
        if _get(s, "function", "slstm") != "slstm":
            raise ValueError(f"from_official: only the sLSTM cell function is supported, got {s.function!r}")
        layout = s.backend
        if layout not in SLSTM_LAYOUTS:
            raise ValueError(f"from_official: sLSTM backend {layout!r} unknown; expected one of {SLSTM_LAYOUTS}")
        kw.update(slstm_num_heads=s.num_heads, slstm_conv1d_kernel_size=s.conv1d_kernel_size,
                  slstm_bias_init=s.bias_init, slstm_recurrent_weight_init=s.recurrent_weight_init,
                  slstm_ffn=ffn is not None)
        if ffn is not None:
            kw.update(ffn_proj_factor=ffn.proj_factor, ffn_act_fn=ffn.act_fn, ffn_bias=ffn.bias,
                      ffn_dropout=ffn.dropout)
            if ffn.ff_type != "ffn_gated":
                raise ValueError(f"from_official: feed-forward type {ffn.ff_type!r} is not supported")
            rounding.add(ffn.round_proj_up_to_multiple_of)
    if len(rounding) > 1:
        raise ValueError(f"from_official: mLSTM and feed-forward widths rounded to different multiples {sorted(rounding)}")
    if rounding:
        kw["round_proj_up_to_multiple_of"] = rounding.pop()
    # The official widths must be ours (they differ e.g. with round_proj_up_dim_up=False).
    multiple = kw.get("round_proj_up_to_multiple_of", 64)
    if m is not None and len(slstm_at) < off.num_blocks:
        ours = up_proj_dim(off.embedding_dim, m.proj_factor, multiple)
        if _official_width(m, off.embedding_dim) != ours:
            raise ValueError(f"from_official: official mLSTM inner dim {_official_width(m, off.embedding_dim)} != ours {ours}")
    if ffn is not None and slstm_at:
        ours = up_proj_dim(off.embedding_dim, ffn.proj_factor, multiple)
        if _official_width(ffn, off.embedding_dim) != ours:
            raise ValueError(f"from_official: official feed-forward dim {_official_width(ffn, off.embedding_dim)} != ours {ours}")
    return kw, layout


def config_to_official(cfg: Any, *, slstm_backend: str = "vanilla", context_length: int = 2048,
                       lm: bool = True):
    """Our config -> an official xLSTMLMModelConfig (lm=True) or xLSTMBlockStackConfig."""
    import xlstm  # the official package, imported only here

    if slstm_backend not in SLSTM_LAYOUTS:
        raise ValueError(f"to_official: slstm_backend must be one of {SLSTM_LAYOUTS}, got {slstm_backend!r}")
    types = cfg.block_types
    if "mlstm" in types and cfg.mlstm_conv1d_kernel_size == 0:
        raise ValueError("to_official: the official mLSTM layer cannot run without its convolution (kernel size 0)")
    if "slstm" in types and cfg.slstm_forget_gate != "sigmoid":
        raise ValueError("to_official: the official sLSTM has only the sigmoid forget gate")
    r = cfg.round_proj_up_to_multiple_of
    mlstm_block = None
    if "mlstm" in types:
        mlstm_block = xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(
            conv1d_kernel_size=cfg.mlstm_conv1d_kernel_size, qkv_proj_blocksize=cfg.qkv_proj_blocksize,
            num_heads=cfg.mlstm_num_heads, proj_factor=cfg.mlstm_proj_factor, round_proj_up_to_multiple_of=r))
    slstm_block = None
    if "slstm" in types:
        ffn = None
        if cfg.slstm_ffn:
            ffn = xlstm.FeedForwardConfig(proj_factor=cfg.ffn_proj_factor, act_fn=cfg.ffn_act_fn, bias=cfg.ffn_bias,
                                          dropout=cfg.ffn_dropout, round_proj_up_to_multiple_of=r)
        slstm_block = xlstm.sLSTMBlockConfig(
            slstm=xlstm.sLSTMLayerConfig(
                backend=slstm_backend, num_heads=cfg.slstm_num_heads, conv1d_kernel_size=cfg.slstm_conv1d_kernel_size,
                bias_init=cfg.slstm_bias_init, recurrent_weight_init=cfg.slstm_recurrent_weight_init),
            feedforward=ffn)
    common = dict(mlstm_block=mlstm_block, slstm_block=slstm_block, context_length=context_length,
                  num_blocks=cfg.num_blocks, embedding_dim=cfg.embedding_dim,
                  add_post_blocks_norm=cfg.add_post_blocks_norm, bias=cfg.bias, dropout=cfg.dropout,
                  slstm_at=list(cfg.slstm_at))
    if not lm:
        return xlstm.xLSTMBlockStackConfig(**common)
    if cfg.vocab_size is None:
        raise ValueError("to_official: an LM config needs vocab_size")
    return xlstm.xLSTMLMModelConfig(
        **common, vocab_size=cfg.vocab_size, tie_weights=cfg.tie_weights,
        weight_decay_on_embedding=cfg.weight_decay_on_embedding, add_embedding_dropout=cfg.add_embedding_dropout)


# --------------------------------------------------------------------------------------------- weights
def _map_stack(sd: dict[str, Tensor], src_prefix: str, dst_prefix: str, cfg: Any, to_official: bool,
               convert: Callable[[str, str, Tensor], Tensor]) -> dict[str, Tensor]:
    """The block stack's tensors of `sd` under the other side's keys (ours -> official when `to_official`),
    each through convert(block kind, our key, tensor); keys `sd` lacks are left out."""
    out: dict[str, Tensor] = {}
    for j, kind in enumerate(cfg.block_types):
        for off_key, our_key in (_MLSTM_KEYS if kind == "mlstm" else _SLSTM_KEYS):
            src_key, dst_key = (our_key, off_key) if to_official else (off_key, our_key)
            src = f"{src_prefix}blocks.{j}.{src_key}"
            if src in sd:
                out[f"{dst_prefix}blocks.{j}.{dst_key}"] = convert(kind, our_key, sd[src])
    norm = "post_blocks_norm.weight"
    if src_prefix + norm in sd:
        out[dst_prefix + norm] = sd[src_prefix + norm]
    return out


def _stack_to_ours(sd: dict[str, Tensor], off_prefix: str, our_prefix: str, cfg: Any,
                   layout: str) -> dict[str, Tensor]:
    def convert(kind: str, our_key: str, t: Tensor) -> Tensor:
        if our_key == "layer.conv.weight":
            return t.reshape(t.shape[0], t.shape[-1])
        if our_key == "layer.recurrent_kernel":
            return slstm_recurrent_from_official(t, layout, cfg.slstm_num_heads)
        if kind == "slstm" and our_key == "layer.bias":
            return slstm_bias_from_official(t, layout, cfg.slstm_num_heads)
        return t

    return _map_stack(sd, off_prefix, our_prefix, cfg, False, convert)


def _stack_to_official(sd: dict[str, Tensor], our_prefix: str, off_prefix: str, cfg: Any,
                       layout: str) -> dict[str, Tensor]:
    def convert(kind: str, our_key: str, t: Tensor) -> Tensor:
        if our_key == "layer.conv.weight":
            return t.unsqueeze(1)
        if our_key == "layer.recurrent_kernel":
            return slstm_recurrent_to_official(t, layout)
        if kind == "slstm" and our_key == "layer.bias":
            return slstm_bias_to_official(t, layout)
        return t

    return _map_stack(sd, our_prefix, off_prefix, cfg, True, convert)


def state_dict_from_official(sd: dict[str, Tensor], cfg: Any, layout: str, lm: bool) -> dict[str, Tensor]:
    """An official xLSTMLMModel (lm) or xLSTMBlockStack state dict in our keys and layouts."""
    if not lm:
        return _stack_to_ours(sd, "", "", cfg, layout)
    ours = _stack_to_ours(sd, "xlstm_block_stack.", "stack.", cfg, layout)
    for key in ("token_embedding.weight", "lm_head.weight"):
        if key in sd:
            ours[key] = sd[key]
    return ours


def state_dict_to_official(ours: dict[str, Tensor], cfg: Any, layout: str, lm: bool) -> dict[str, Tensor]:
    """Our xLSTMLM (lm) or xLSTMBlockStack state dict in the official keys and layout."""
    sd = _stack_to_official(ours, "stack." if lm else "", "xlstm_block_stack." if lm else "", cfg, layout)
    if lm:
        sd["token_embedding.weight"] = ours["token_embedding.weight"]
        sd["lm_head.weight"] = ours["lm_head.weight"]
    return sd
