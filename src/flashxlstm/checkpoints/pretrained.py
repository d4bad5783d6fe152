"""Reading checkpoint directories: which family a directory holds, and the xLSTM-7B family's layouts.

Recognised layouts:
- Hugging Face hub (xLSTM-7B family): config.json (NX-AI and/or transformers field names; legacy and kernel
  fields ignored) + model.safetensors, or shards listed in model.safetensors.index.json (each shard a file
  inside the directory). Embedding at backbone.embeddings.weight; q/k/v or query/key/value; "single" or
  "fused" weights.
- NX-AI (official xlstm package): config.yaml + model.safetensors or model_0.safetensors, model_1, ...;
  embedding at embedding.weight.
- flashxlstm's own NeurIPS-family checkpoints: config.json with "model_type": "flashxlstm-neurips"
  (flashxlstm.checkpoints.native).

This module works on config dicts, file lists and (key, tensor) streams; the models build themselves from
them (flashxlstm.models.xlstm_large.xLSTMLarge.load_checkpoint): the checkpoint is streamed tensor by
tensor into a model allocated once, so peak memory is about one copy of the weights. `large_places` maps
each single-form tensor onto its rows of a "single" or "fused" model, so either form loads into either.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from .atomic import checked_directory, read_json_object, resolve_directory
from .hub import CONFIG_NAME, FLASHXLSTM_LARGE_TYPE, FUSED_PARTS, INDEX_NAME, SINGLE_WEIGHTS, split_fused
from .native import NEURIPS_MODEL_TYPE
from .strict import Place

LARGE_MODEL_TYPES = ("xlstm", "xlstm_large", "xlstm-large", "xlstm_7b", FLASHXLSTM_LARGE_TYPE)

_RENAMES = ((re.compile(r"\.mlstm_layer\.query\."), ".mlstm_layer.q."),
            (re.compile(r"\.mlstm_layer\.key\."), ".mlstm_layer.k."),
            (re.compile(r"\.mlstm_layer\.value\."), ".mlstm_layer.v."))


def checkpoint_family(path: str | os.PathLike) -> tuple[str, Path]:
    """("neurips" or "large", the directory) for a checkpoint directory (see the module docstring), else a
    clear error. A directory whose save was interrupted is read from its complete previous copy
    (atomic.resolve_directory)."""
    path = checked_directory(resolve_directory(path), "from_pretrained")
    if (path / CONFIG_NAME).is_file():
        config = read_json_object(path / CONFIG_NAME, "from_pretrained")
        model_type = config.get("model_type")
        if model_type == NEURIPS_MODEL_TYPE:
            return "neurips", path
        if model_type in LARGE_MODEL_TYPES or (model_type is None and _looks_large(config)):
            return "large", path
        raise ValueError(f"from_pretrained: unknown model_type {model_type!r} in {path / CONFIG_NAME}; expected "
                         f"'xlstm' or {FLASHXLSTM_LARGE_TYPE!r} (xLSTM-7B family) or {NEURIPS_MODEL_TYPE!r}")
    if (path / "config.yaml").is_file():
        return "large", path
    found = sorted(p.name for p in path.iterdir())[:8]
    raise ValueError(f"from_pretrained: unknown checkpoint layout in {path}: no config.json (hub or flashxlstm "
                     f"layout) and no config.yaml (NX-AI); found {found}")


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"from_pretrained: dtype must be a floating torch.dtype or its name, got {dtype!r}")
    return resolved


# ---- layout and files -------------------------------------------------------------------------------

def _looks_large(config: dict) -> bool:
    return "num_heads" in config and ("embedding_dim" in config or "hidden_size" in config)


def read_large_config(path: Path) -> dict:
    if (path / CONFIG_NAME).is_file():
        return read_json_object(path / CONFIG_NAME, "from_pretrained")
    import yaml

    with open(path / "config.yaml") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ValueError(f"from_pretrained: {path / 'config.yaml'} must hold a mapping of config fields")
    return d


def weight_files(path: Path) -> list[tuple[Path, list[str] | None]]:
    """The safetensors files of a checkpoint, each with the keys the index assigns it (None: all keys)."""
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = read_json_object(index, "from_pretrained").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"from_pretrained: {index} has no weight_map")
        by_file: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            by_file.setdefault(name, []).append(key)
        for name in by_file:  # a plain file name: a path could reach outside the directory
            if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"from_pretrained: {index} names shard {name!r}, which is not a file name inside "
                                 f"the checkpoint directory; shards must lie next to the index (no paths)")
        for name, keys in by_file.items():
            if not (path / name).is_file():
                raise FileNotFoundError(f"from_pretrained: missing shard {path / name} (listed in {INDEX_NAME} "
                                        f"for {len(keys)} tensor(s) such as {keys[0]!r})")
        return [(path / name, keys) for name, keys in by_file.items()]
    if (path / SINGLE_WEIGHTS).is_file():
        return [(path / SINGLE_WEIGHTS, None)]
    numbered = []
    while (path / f"model_{len(numbered)}.safetensors").is_file():
        numbered.append((path / f"model_{len(numbered)}.safetensors", None))
    if numbered:
        extra = sorted(p.name for p in path.glob("model_*.safetensors") if (p, None) not in numbered)
        if extra:
            raise FileNotFoundError(f"from_pretrained: missing shard model_{len(numbered)}.safetensors in {path} "
                                    f"(found {extra})")
        return numbered
    raise FileNotFoundError(f"from_pretrained: no weights in {path}: expected {SINGLE_WEIGHTS}, {INDEX_NAME} "
                            "with its shards, or model_0.safetensors, model_1.safetensors, ...")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise ValueError(f"from_pretrained: cannot read {file} as safetensors ({e})") from None


def _iter_keys(files) -> Iterator[tuple[Path, str]]:
    for file, keys in files:
        with _open(file) as f:
            present = set(f.keys())
            for key in keys if keys is not None else sorted(present):
                if key not in present:
                    raise ValueError(f"from_pretrained: {file.name} lacks {key!r}, which {INDEX_NAME} assigns to it")
                yield file, key


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tensor_shapes(files) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Canonical key -> (shape, dtype), read from the safetensors headers only (no tensor data)."""
    out = {}
    for file, keys in files:
        with _open(file) as f:
            for key in keys if keys is not None else f.keys():
                sl = f.get_slice(key)
                out[canonical_key(key)] = (tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype(), torch.float32))
    if not out:
        raise ValueError(f"from_pretrained: the checkpoint holds no tensors ({[str(f) for f, _ in files]})")
    emb = out.get("backbone.embeddings.weight")
    if emb is not None:  # report the stored dtype of the weights, not of some odd buffer
        out = {"backbone.embeddings.weight": emb, **out}
    return out


# ---- key names and sizes ------------------------------------------------------------------------------

def canonical_key(key: str) -> str:
    """A checkpoint key in flashxlstm's (hub) naming."""
    if key == "embedding.weight":
        return "backbone.embeddings.weight"
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def sizes_from_shapes(shapes: dict) -> dict[str, int]:
    """qk_dim / v_dim / ffn_dim as the tensors have them (block 0)."""
    get = lambda name: shapes.get(f"backbone.blocks.0.{name}.weight", (None,))[0]
    out = {}
    v_dim = (get("mlstm_layer.out_proj") or (None, None))[1]
    if get("mlstm_layer.q"):
        out["qk_dim"] = get("mlstm_layer.q")[0]
    elif get("mlstm_layer.qkv_opreact") and v_dim:
        out["qk_dim"] = (get("mlstm_layer.qkv_opreact")[0] - 2 * v_dim) // 2
    if v_dim:
        out["v_dim"] = v_dim
    if get("ffn.proj_down"):
        out["ffn_dim"] = get("ffn.proj_down")[1]
    return out


def large_places(params: dict[str, torch.Tensor], config) -> dict[str, Place]:
    """Single-form key of every weight/bias -> (model parameter key, first row in it, the part's shape)."""
    c = config
    rows = {"mlstm_layer.q": c.qk_head_dim_total, "mlstm_layer.k": c.qk_head_dim_total,
            "mlstm_layer.v": c.v_head_dim_total, "mlstm_layer.ogate_preact": c.v_head_dim_total,
            "mlstm_layer.igate_preact": c.num_heads, "mlstm_layer.fgate_preact": c.num_heads,
            "ffn.proj_up_gate": c.ffn_hidden_dim, "ffn.proj_up": c.ffn_hidden_dim}
    places = {}
    for key, t in params.items():
        for fused, parts in FUSED_PARTS.items():
            m = re.fullmatch(rf"(.*\.){re.escape(fused)}\.(weight|bias)", key)
            if m:
                offset = 0
                for part in parts:
                    places[f"{m.group(1)}{part}.{m.group(2)}"] = (key, offset, (rows[part],) + tuple(t.shape[1:]))
                    offset += rows[part]
                break
        else:
            places[key] = (key, 0, tuple(t.shape))
    return places


def single_form_items(items, config) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) items of any naming/form this module reads, as single-form items in the hub naming."""
    for key, tensor in items:
        yield from split_fused(canonical_key(key), tensor, config)


def read_tensors(files) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every tensor of the checkpoint, one file open at a time, one tensor in memory."""
    current, handle = None, None
    try:
        for file, key in _iter_keys(files):
            if file != current:
                if handle is not None:
                    handle.__exit__(None, None, None)
                current, handle = file, _open(file).__enter__()
            yield key, handle.get_tensor(key)
    finally:
        if handle is not None:
            handle.__exit__(None, None, None)
