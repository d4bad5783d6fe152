"""flashxlstm's own checkpoint format: one directory per checkpoint.

    config.json          {"model_type": "flashxlstm-neurips", <the model config's fields>}
    model.safetensors    the model's parameters and buffers (a tied head is stored once)
    training_state.pt    optional: optimiser, step, RNG, carried recurrent state, history (for --resume)
    train_config.json    optional: the training settings of the run that wrote it

A checkpoint is written as a whole (see `atomic.py`): a crash mid-save leaves the previous one intact.
Loading checks every file and reports what is missing or corrupt in one line; the model builds itself from
`config_fields` and `read_weights` (flashxlstm.models.xlstm_lm.xLSTMLM.load_checkpoint), so this module
imports no model.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_directory, checked_directory, read_json_object, resolve_directory, write_json_atomic
from .strict import load_strict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_STATE_NAME = "training_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
NEURIPS_MODEL_TYPE = "flashxlstm-neurips"
CHECKPOINT_FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAINING_STATE_NAME, TRAIN_CONFIG_NAME)


def _model_type_of(model: nn.Module) -> str:
    model_type = getattr(model, "model_type", None)
    if model_type != NEURIPS_MODEL_TYPE:
        raise TypeError(f"save_model: cannot save a {type(model).__name__} in this format; expected a flashxlstm "
                        f"xLSTMLM (model_type {NEURIPS_MODEL_TYPE!r})")
    return model_type


def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor (a tied head) stored once, contiguous, on the CPU."""
    seen: dict[tuple[int, int], str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out



def write_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    training_state: dict | None = None,
    train_config: dict | None = None,
) -> Path:
    """Write model (and optionally training state) as one checkpoint directory, atomically."""
    config = {"model_type": _model_type_of(model), **model.config.to_dict()}
    with atomic_directory(directory) as tmp:
        write_json_atomic(tmp / CONFIG_NAME, config, sort_keys=True)
        save_file(_unique_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE_NAME)
        if train_config is not None:
            write_json_atomic(tmp / TRAIN_CONFIG_NAME, train_config, sort_keys=True)
    return Path(directory)


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save a model as a flashxlstm checkpoint directory (config.json + model.safetensors), atomically."""
    return write_checkpoint(directory, model)


def checked_checkpoint_dir(directory: str | os.PathLike) -> Path:
    """The checkpoint directory (its complete previous copy if a save was interrupted), checked to exist."""
    return checked_directory(resolve_directory(directory))


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a checkpoint, with its model_type checked."""
    path = checked_checkpoint_dir(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint has no {CONFIG_NAME}: {path}")
    config = read_json_object(path)
    if "model_type" not in config:
        raise ValueError(f"{CONFIG_NAME} has no model_type (expected {NEURIPS_MODEL_TYPE!r}): {path}")
    return config


def config_fields(config: dict) -> dict:
    """The model config's fields of a config.json dict (model_type checked and removed)."""
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if model_type != NEURIPS_MODEL_TYPE:
        raise ValueError(f"unknown model_type {model_type!r} in {CONFIG_NAME}; expected {NEURIPS_MODEL_TYPE!r}")
    return fields


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint has no {WEIGHTS_NAME}: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupt {WEIGHTS_NAME} ({e}): {path}") from None


def load_state_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy `weights` into `model` through the strict loader (flashxlstm.checkpoints.strict)."""
    load_strict(model.state_dict(keep_vars=True), weights.items(), source)


def load_training_state(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(training_state, train_config) of a checkpoint written by the training loop, for --resume."""
    path = checked_checkpoint_dir(directory)
    state_path, cfg_path = path / TRAINING_STATE_NAME, path / TRAIN_CONFIG_NAME
    for p in (state_path, cfg_path):
        if not p.is_file():
            raise FileNotFoundError(f"cannot resume: checkpoint has no {p.name} (it holds weights only?): {p}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"corrupt {TRAINING_STATE_NAME} ({type(e).__name__}: {reason}): {state_path}") from None
    train_config = read_json_object(cfg_path)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"corrupt {TRAINING_STATE_NAME}: no training step recorded: {state_path}")
    return state, train_config
