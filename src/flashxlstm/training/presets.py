"""Model presets for training from scratch, by name or from a config file (JSON / TOML / YAML).

The 7B family ("large-125m" ... "large-1.3b"): the xLSTM-7B architecture (mLSTM blocks with SwiGLU FFNs,
qk head dim half the v head dim, soft-capped gates and logits) at the widths and depths of the usual
GPT-3 / Llama size ladder. The NeurIPS family ("xlstm71-125m", "xlstm10-350m", ...): the paper's xLSTM[7:1] and
xLSTM[1:0] language models at 125M and 350M (Table of the paper's scaling runs: 24 blocks x 768,
48 blocks x 1024). Parameter counts depend on the vocabulary of the data; with 50,304 symbols and an untied
head: large-125m 162.3M, large-350m 406.9M, large-760m 834.7M, large-1.3b 1,421M, xlstm71-125m 163.6M,
xlstm71-350m 408.4M, xlstm10-125m 163.8M, xlstm10-350m 409.3M. The names are those of the GPT-3 ladder's
widths and depths, whose counts assume a tied head; the untied head adds 39M at width 768, 51M at 1024,
77M at 1536 and 103M at 2048.

A config file holds {"family": "large" | "neurips", ...the family config's fields...}; "preset": NAME starts
from a preset and the other keys override it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

LARGE = {  # name: (embedding_dim, num_blocks, num_heads)
    "large-125m": (768, 12, 4),
    "large-350m": (1024, 24, 4),
    "large-760m": (1536, 24, 8),
    "large-1.3b": (2048, 24, 8),
}
NEURIPS = {  # name: (slstm_at, embedding_dim, num_blocks)
    "xlstm71-125m": ("xLSTM[7:1]", 768, 24),
    "xlstm71-350m": ("xLSTM[7:1]", 1024, 48),
    "xlstm10-125m": ("xLSTM[1:0]", 768, 24),
    "xlstm10-350m": ("xLSTM[1:0]", 1024, 48),
}
PRESETS = sorted(LARGE) + sorted(NEURIPS)


def preset_config(name: str, vocab_size: int) -> tuple[str, dict]:
    """(family, config fields) of a preset."""
    if name in LARGE:
        d, blocks, heads = LARGE[name]
        return "large", dict(vocab_size=vocab_size, embedding_dim=d, num_blocks=blocks, num_heads=heads)
    if name in NEURIPS:
        pattern, d, blocks = NEURIPS[name]
        return "neurips", dict(vocab_size=vocab_size, embedding_dim=d, num_blocks=blocks, slstm_at=pattern,
                               mlstm_num_heads=4, slstm_num_heads=4)
    raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)} or a config file")


def read_config_file(path: str | Path) -> dict:
    """A JSON, TOML or YAML file as a dict (TOML through tomllib / tomli, YAML through pyyaml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            from .progress import require

            data = require("yaml", "yaml", "a YAML config").safe_load(path.read_text())
        else:
            raise ValueError(f"config file {path}: expected .json, .toml, .yaml or .yml")
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"config file {path} is not valid: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping at the top level")
    return data


def resolve_model(spec: str | dict, vocab_size: int) -> tuple[str, dict]:
    """(family, config fields) for a preset name, a config file path, or an already-read dict."""
    if isinstance(spec, str) and spec in LARGE.keys() | NEURIPS.keys():
        return preset_config(spec, vocab_size)
    fields = dict(spec) if isinstance(spec, dict) else read_config_file(spec)
    family = None
    if "preset" in fields:
        family, base = preset_config(fields.pop("preset"), vocab_size)
        fields = {**base, **fields}
    family = fields.pop("family", family)
    if family not in ("large", "neurips"):
        raise ValueError(f"model config {spec!r}: 'family' must be 'large' or 'neurips' (or give a 'preset')")
    fields.setdefault("vocab_size", vocab_size)
    if fields["vocab_size"] < vocab_size:
        raise ValueError(f"model vocab_size {fields['vocab_size']} is smaller than the data's {vocab_size}")
    return family, fields


def build_model(family: str, fields: dict) -> nn.Module:
    if family == "large":
        from ..models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

        known = {f.name for f in dataclasses.fields(xLSTMLargeConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown xLSTMLargeConfig field(s): {', '.join(unknown)}")
        return xLSTMLarge(xLSTMLargeConfig(**fields))
    from ..models.xlstm_lm import xLSTMLM, xLSTMLMConfig

    try:
        return xLSTMLM(xLSTMLMConfig.from_dict(fields))
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad xLSTMLMConfig: {e}") from None


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The residual blocks (the unit of FSDP sharding and activation checkpointing)."""
    if hasattr(model, "stack"):
        return list(model.stack.blocks)
    return list(model.backbone.blocks)
