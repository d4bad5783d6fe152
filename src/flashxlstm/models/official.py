"""Official `xlstm` modules (2.0.6) <-> flashxlstm models, both ways, for both families.

    model = from_official(official_module)                   # xLSTMLMModel -> xLSTMLM, xLSTMBlockStack -> xLSTMBlockStack,
                                                             # xLSTMLarge (7B family) -> xLSTMLarge
    model = from_official(state_dict, official_config)       # the same from a state dict and its config object
    official = to_official(model)                            # an official module with our weights ("vanilla" sLSTM)
    state_dict, official_config = to_official(model, as_state_dict=True, slstm_backend="cuda")

The key and layout mapping lives in flashxlstm.checkpoints.official / .nxai; weights are copied through the
strict loader (flashxlstm.checkpoints.strict). Dispatch is by the official module's class name and, for state
dicts, by the official config's class name.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..checkpoints import nxai, official
from ..checkpoints.strict import load_strict
from .xlstm_large import xLSTMLarge, xLSTMLargeConfig
from .xlstm_lm import xLSTMBlockStack, xLSTMLM, xLSTMLMConfig


def _neurips_from_state_dict(sd: dict[str, Tensor], off_cfg: Any, lm: bool) -> nn.Module:
    fields, layout = official.config_from_official(off_cfg)
    cfg = xLSTMLMConfig(**fields)
    ours = official.state_dict_from_official(sd, cfg, layout, lm)
    model = xLSTMLM(cfg) if lm else xLSTMBlockStack(cfg)
    load_strict(model.state_dict(keep_vars=True), ours.items(), "from_official: the official state dict")
    return model


@torch.no_grad()
def _large_from_state_dict(sd: dict[str, Tensor], off_cfg: Any) -> xLSTMLarge:
    config = xLSTMLargeConfig.from_dict(nxai.large_config_fields(off_cfg))
    weights = nxai.large_weights_from_official(sd)
    ref = weights["backbone.embeddings.weight"]
    with torch.device("meta"):
        model = xLSTMLarge(config)
    model = model.to(ref.dtype).to_empty(device=ref.device)
    model._fill(weights.items(), "from_official: the official xLSTMLarge state dict")
    return model.eval()


def _large_from_module(mod: nn.Module) -> xLSTMLarge:
    if not nxai.is_official_large(mod):
        raise TypeError(f"expected the official xlstm.xlstm_large xLSTMLarge, got {type(mod).__name__}")
    return _large_from_state_dict(mod.state_dict(), mod.config).train(mod.training)


OFFICIAL_MODULES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "xLSTMLMModel": lambda mod: _neurips_from_state_dict(mod.state_dict(), mod.config, lm=True),
    "xLSTMBlockStack": lambda mod: _neurips_from_state_dict(mod.state_dict(), mod.config, lm=False),
    "xLSTMLarge": _large_from_module,
}
OFFICIAL_CONFIGS: dict[str, Callable[[dict, Any], nn.Module]] = {
    "xLSTMLMModelConfig": lambda sd, cfg: _neurips_from_state_dict(sd, cfg, lm=True),
    "xLSTMBlockStackConfig": lambda sd, cfg: _neurips_from_state_dict(sd, cfg, lm=False),
    "xLSTMLargeConfig": _large_from_state_dict,
}


def from_official(module_or_state_dict: nn.Module | dict[str, Tensor], config: Any = None) -> nn.Module:
    """An official module (or its state dict plus official config) -> the flashxlstm model with equal outputs."""
    obj = module_or_state_dict
    if isinstance(obj, nn.Module):
        name = type(obj).__name__
        if name not in OFFICIAL_MODULES:
            raise TypeError(f"from_official: no converter for official module {name}; supported: {sorted(OFFICIAL_MODULES)}")
        model = OFFICIAL_MODULES[name](obj)
        first = next(obj.parameters(), None)
        if first is not None and first.is_floating_point():
            model = model.to(first.device, first.dtype)  # keep the official module's device and precision
        return model
    if isinstance(obj, dict):
        if config is None:
            raise ValueError("from_official: converting a state dict needs its official config object (config=...)")
        kind = type(config).__name__
        if kind not in OFFICIAL_CONFIGS:
            raise TypeError(f"from_official: no converter for official config {kind}; supported: {sorted(OFFICIAL_CONFIGS)}")
        return OFFICIAL_CONFIGS[kind](obj, config)
    raise TypeError(f"from_official: expected an official nn.Module or a state dict, got {type(obj).__name__}")


def to_official(model: nn.Module, *, slstm_backend: str = "vanilla", context_length: int = 2048,
                as_state_dict: bool = False):
    """Our xLSTMLM / xLSTMBlockStack -> the official module with the same weights (or (state_dict, config)).

    The official mLSTM layer needs a context_length (its causal mask); any sequence up to it works.
    slstm_backend picks the layout written; building a "cuda" module compiles the official CUDA kernel, so on a
    CPU machine ask for as_state_dict=True.
    """
    if isinstance(model, xLSTMLM):
        lm = True
    elif isinstance(model, xLSTMBlockStack):
        lm = False
    else:
        raise TypeError(f"to_official: expected an xLSTMLM or xLSTMBlockStack, got {type(model).__name__}")
    cfg = model.config
    off_cfg = official.config_to_official(cfg, slstm_backend=slstm_backend, context_length=context_length, lm=lm)
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd = official.state_dict_to_official(ours, cfg, slstm_backend, lm)
    if as_state_dict:
        return sd, off_cfg
    import xlstm

    off = xlstm.xLSTMLMModel(off_cfg) if lm else xlstm.xLSTMBlockStack(off_cfg)
    off.load_state_dict(sd)
    return off.to(next(model.parameters()).dtype)
