"""transformers integration: `AutoConfig` and `AutoModelForCausalLM` open flashxlstm checkpoints.

    import flashxlstm
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/checkpoint")   # an xLSTMLM or xLSTMLarge

Registered model types: "flashxlstm-neurips" (our NeurIPS-family format, written by xLSTMLM.save_pretrained
and `flashxlstm train`) and "flashxlstm-large" (a 7B-family checkpoint of a shape transformers' own xLSTM
cannot run, written with save_pretrained(..., for_transformers=False)). The usual 7B-family checkpoints
("model_type": "xlstm") belong to transformers' own xLSTMForCausalLM and are left to it.

Importing flashxlstm calls `install()`: it registers at once when transformers' auto modules are loaded,
and otherwise when they load later (an import hook that runs transformers' public `register` calls right
after those modules execute), so `import flashxlstm` never pays for importing transformers. The model
returned is flashxlstm's own (not a transformers PreTrainedModel): forward returns .logits / .loss / .state
and generate takes transformers' keywords. from_pretrained takes dtype (or torch_dtype, "auto" = as
stored) and device_map as a single device ("auto": CUDA when available); transformers' hub plumbing
arguments (revision, cache_dir, ...) are accepted and the checkpoint's own config.json is what is loaded.
"""
from __future__ import annotations

import importlib.abc
import sys
from typing import Any

import torch

from .checkpoints.hub import FLASHXLSTM_LARGE_TYPE
from .checkpoints.native import NEURIPS_MODEL_TYPE
from .models.auto import from_pretrained
from .models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from .models.xlstm_lm import xLSTMLM, xLSTMLMConfig

_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODELING_MODULE = "transformers.models.auto.modeling_auto"
_HF_CONFIGS: dict[str, type] = {}


def _device_of(device_map: Any, device: Any) -> Any:
    if device is not None:
        return device
    if device_map is None or isinstance(device_map, (str, torch.device, int)):
        if device_map == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device_map
    raise ValueError(f"from_pretrained: device_map must name one device (or 'auto'), got {device_map!r}; "
                     "flashxlstm models are not split across devices")


def _auto_from_pretrained(family_cls):
    def load(cls, path, *model_args, config=None, dtype=None, torch_dtype=None, device_map=None, device=None,
             **kwargs):
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained: unexpected positional arguments {model_args}")
        dtype = dtype if dtype is not None else torch_dtype
        overrides = {k: v for k, v in kwargs.items() if not k.startswith("_") and k not in _HUB_PLUMBING}
        model = from_pretrained(path, dtype=None if dtype == "auto" else dtype,
                                device=_device_of(device_map, device), **overrides)
        if not isinstance(model, family_cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {family_cls.__name__}")
        return model

    return classmethod(load)


_HUB_PLUMBING = {"cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token",
                 "trust_remote_code", "code_revision", "adapter_kwargs", "low_cpu_mem_usage", "use_safetensors"}


class xLSTMLMForCausalLM(xLSTMLM):
    """What AutoModelForCausalLM maps "flashxlstm-neurips" to: from_pretrained returns an xLSTMLM."""

    from_pretrained = _auto_from_pretrained(xLSTMLM)

    @classmethod
    def _from_config(cls, config, **kwargs) -> xLSTMLM:
        return xLSTMLM(_our_config(xLSTMLMConfig, config))


class xLSTMLargeForCausalLM(xLSTMLarge):
    """What AutoModelForCausalLM maps "flashxlstm-large" to: from_pretrained returns an xLSTMLarge."""

    from_pretrained = _auto_from_pretrained(xLSTMLarge)

    @classmethod
    def _from_config(cls, config, **kwargs) -> xLSTMLarge:
        return xLSTMLarge(_our_config(xLSTMLargeConfig, config))


def _our_config(config_cls, hf_config):
    d = hf_config.to_dict()
    names = set(config_cls.__dataclass_fields__)
    if config_cls is xLSTMLargeConfig:
        return config_cls.from_dict(d)
    return config_cls.from_dict({k: v for k, v in d.items() if k in names})


def hf_config_class(model_type: str) -> type:
    """The transformers config class for one of our model types (a PretrainedConfig holding our fields)."""
    if model_type not in _HF_CONFIGS:
        from transformers import PretrainedConfig

        name = {NEURIPS_MODEL_TYPE: "FlashxLSTMNeuripsConfig", FLASHXLSTM_LARGE_TYPE: "FlashxLSTMLargeConfig"}[model_type]
        _HF_CONFIGS[model_type] = type(name, (PretrainedConfig,), {"model_type": model_type, "__module__": __name__})
    return _HF_CONFIGS[model_type]


_MODELS = {NEURIPS_MODEL_TYPE: xLSTMLMForCausalLM, FLASHXLSTM_LARGE_TYPE: xLSTMLargeForCausalLM}


def _register_configs(module) -> None:
    for model_type in _MODELS:
        module.AutoConfig.register(model_type, hf_config_class(model_type), exist_ok=True)


def _register_models(module) -> None:
    for model_type, model_cls in _MODELS.items():
        model_cls.config_class = hf_config_class(model_type)
        module.AutoModelForCausalLM.register(model_cls.config_class, model_cls, exist_ok=True)


_AFTER = {_CONFIG_MODULE: _register_configs, _MODELING_MODULE: _register_models}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        self.after(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of transformers' two auto modules so that our registration runs right after them."""

    def find_spec(self, name, path, target=None):
        if name not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _AFTER[name])
                return spec
        return None


def install() -> None:
    """Register now for the auto modules already loaded, and hook the others (idempotent)."""
    for name, after in _AFTER.items():
        if name in sys.modules:
            after(sys.modules[name])
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
