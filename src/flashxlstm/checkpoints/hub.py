"""Writing the Hugging Face hub layout of the xLSTM-7B family (what `xLSTMForCausalLM.from_pretrained` reads).

Weights are always written in the "single" form (a fused model is split on save): transformers cannot
load fused checkpoints (its fused-gate initialisation crashes), and `from_pretrained(..., weight_mode="fused")`
fuses them again on load.

    config.json                         NX-AI names (embedding_dim, num_blocks, ...) and transformers
                                        names (hidden_size, num_hidden_layers, model_type "xlstm")
    model.safetensors                   when everything fits in one shard, else
    model-0000k-of-0000n.safetensors    shards of at most max_shard_size bytes, and
    model.safetensors.index.json        {"metadata": {"total_size"}, "weight_map": {key: shard}}

Every file is written to a temp name and moved into place with os.replace; the index and config.json
come last, so a reader never sees an index naming a shard that is not complete. Shards of an earlier
save that the new one does not use are removed; other files in the directory (a tokenizer) are kept.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..nn.swiglu import round_up
from .atomic import atomic_file, write_json_atomic

CONFIG_NAME = "config.json"
SINGLE_WEIGHTS = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
FLASHXLSTM_LARGE_TYPE = "flashxlstm-large"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")

# flashxlstm-only fields that transformers' config must not see (sizes are carried by the tensors)
_NOT_FOR_HUB = ("backend", "step_backend", "norm_gate_backend", "qk_dim", "v_dim", "ffn_dim")
# fused parameter -> its single parts, in row order
FUSED_PARTS = {
    "mlstm_layer.qkv_opreact": ("mlstm_layer.q", "mlstm_layer.k", "mlstm_layer.v", "mlstm_layer.ogate_preact"),
    "mlstm_layer.ifgate_preact": ("mlstm_layer.igate_preact", "mlstm_layer.fgate_preact"),
    "ffn.proj_up_gate_z": ("ffn.proj_up_gate", "ffn.proj_up"),
}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """5_000_000, "5GB", "500MB", "2GiB" -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"max_shard_size must be a positive byte count or a string like '5GB', got {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def split_fused(key: str, tensor: torch.Tensor, config: Any) -> list[tuple[str, torch.Tensor]]:
    """A tensor as single-form (key, tensor) pieces: a fused one is split into its parts' rows."""
    qk, v, nh, ff = config.qk_head_dim_total, config.v_head_dim_total, config.num_heads, config.ffn_hidden_dim
    rows = {"mlstm_layer.qkv_opreact": [qk, qk, v, v], "mlstm_layer.ifgate_preact": [nh, nh],
            "ffn.proj_up_gate_z": [ff, ff]}
    for fused, parts in FUSED_PARTS.items():
        m = re.fullmatch(rf"(.*\.){re.escape(fused)}\.(weight|bias)", key)
        if m:
            if tensor.shape[0] != sum(rows[fused]):
                raise ValueError(f"shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)}, model expects "
                                 f"{sum(rows[fused])} rows ({' + '.join(map(str, rows[fused]))})")
            return [(f"{m.group(1)}{p}.{m.group(2)}", t) for p, t in zip(parts, tensor.split(rows[fused]))]
    return [(key, tensor)]


def transformers_incompatibility(config: Any) -> str | None:
    """Why transformers' xLSTMForCausalLM cannot run a model of this config, or None when it can.

    transformers sizes the q/k/v projections as int(hidden_size * factor) but its recurrent cache as that size
    rounded up to a multiple of 64 (then split over the heads), so the two agree only when the q/k and v widths
    are multiples of 64; it derives every size from the factors, so explicit sizes must equal those.
    """
    D = config.embedding_dim
    qk, v = int(D * config.qk_dim_factor), int(D * config.v_dim_factor)
    ffn = round_up(D * config.ffn_proj_factor, config.ffn_round_up_to_multiple_of)
    for name, theirs, ours in (("qk_dim", qk, config.qk_head_dim_total), ("v_dim", v, config.v_head_dim_total),
                               ("ffn_dim", ffn, config.ffn_hidden_dim)):
        if theirs != ours:
            return (f"its {name} is {ours}, but transformers derives {theirs} from the config's factors "
                    f"(embedding_dim {D})")
    for name, size in (("q/k width (embedding_dim * qk_dim_factor)", qk), ("v width (embedding_dim * v_dim_factor)", v)):
        if size % 64:
            return (f"its {name} is {size}, not a multiple of 64: transformers sizes its recurrent cache with the "
                    f"width rounded up to 64, so it fails (\"The expanded size of the tensor ...\")")
    return None


def hub_config(config: Any, dtype: torch.dtype, for_transformers: bool = True) -> dict[str, Any]:
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_FOR_HUB}
    for name in ("qk_dim_factor", "v_dim_factor", "ffn_proj_factor", "norm_eps", "eps"):
        d[name] = float(d[name])  # transformers' config rejects ints in float fields
    if not for_transformers:  # explicit sizes; a model_type transformers does not claim
        d.update({k: getattr(config, k) for k in ("qk_dim", "v_dim", "ffn_dim")})
    d.update(
        model_type="xlstm" if for_transformers else FLASHXLSTM_LARGE_TYPE,
        architectures=["xLSTMForCausalLM" if for_transformers else "xLSTMLarge"], hidden_size=config.embedding_dim,
        num_hidden_layers=config.num_blocks, torch_dtype=str(dtype).removeprefix("torch."), weight_mode="single",
        mode="inference", return_last_states=True,
    )
    return d


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Keys grouped in order into shards of at most max_bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, n in sizes.items():
        if shards[-1] and used + n > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += n
    return shards


def save_large_pretrained(model: torch.nn.Module, path: str | os.PathLike, max_shard_size: int | str = "5GB",
                          for_transformers: bool = True) -> Path:
    """Write the model in the hub layout. for_transformers=True (default) refuses a shape transformers'
    xLSTMForCausalLM cannot run (see transformers_incompatibility); for_transformers=False writes it anyway
    with model_type "flashxlstm-large", which flashxlstm loads and transformers declines by name."""
    max_bytes = parse_size(max_shard_size)
    if for_transformers:
        why = transformers_incompatibility(model.config)
        if why is not None:
            raise ValueError(f"save_pretrained: transformers' xLSTMForCausalLM cannot run this model: {why}. Pick "
                             "a shape it runs, or pass for_transformers=False to write a checkpoint only "
                             "flashxlstm reads (model_type 'flashxlstm-large')")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_pretrained: {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        tensors.update(split_fused(key, t, model.config))
    dtype = tensors["backbone.embeddings.weight"].dtype
    shards = plan_shards({k: t.numel() * t.element_size() for k, t in tensors.items()}, max_bytes)
    names = ([SINGLE_WEIGHTS] if len(shards) == 1
             else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    for name, keys in zip(names, shards):
        part = {k: tensors[k].detach().to("cpu").contiguous() for k in keys}
        atomic_file(path / name, lambda tmp: save_file(part, str(tmp), metadata={"format": "pt"}))
        del part
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
        write_json_atomic(path / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    else:
        (path / INDEX_NAME).unlink(missing_ok=True)
    write_json_atomic(path / CONFIG_NAME, hub_config(model.config, dtype, for_transformers))
    for stale in path.iterdir():
        if SHARD_PATTERN.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    if len(shards) > 1:
        (path / SINGLE_WEIGHTS).unlink(missing_ok=True)
    return path
