"""The xLSTM-7B family ("xLSTM Large"): config and model (docs/models.md).

    x = embeddings(input_ids)
    per block: x = x + mLSTMLayer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    logits = 30 * tanh(lm_head(RMSNorm(x)) / 30)

`out = model(input_ids, state=None, attention_mask=None, labels=None)` for any length: out.logits (B, S, V)
float32, out.state a tuple with one mLSTMCellState(C, n, m) per block, float32 whatever the model dtype,
never modified in place (a new tuple is returned), out.loss with labels (flashxlstm.models.base). None starts
from zeros (m = 0, the TFLA/xLSTMLarge convention). Parameter names are those of the Hugging Face hub
checkpoints (backbone.embeddings.weight, backbone.blocks.{i}...., lm_head.weight), so the hub layout loads
and saves without renaming.

The config carries the official `xLSTMLargeConfig` field names and defaults; the four size fields default
to the 7B (the official package makes them required). transformers' names are accepted too (hidden_size,
num_hidden_layers; its kernel-selection fields are accepted and ignored). Official kernel-selection fields (chunkwise_kernel,
mode, ...) belong to mlstm_kernels and are ignored by `from_dict`; `backend` / `step_backend` choose
flashxlstm's mLSTM forms instead.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import hub, pretrained as layouts
from ..checkpoints.atomic import checked_directory, resolve_directory
from ..checkpoints.strict import load_strict
from ..nn.mlstm_large_layer import mLSTMLargeLayer, soft_cap
from ..ops.fused import add_rms_norm
from ..ops.fused.linear import linear_decode
from ..nn.large_norms import MultiHeadLayerNorm, RMSNorm
from ..nn.swiglu import SwiGLU, round_up
from .base import (CausalLMOutput, accept_hf_names, check_attention_mask, check_input_ids, check_token_type_ids,
                   xLSTMPreTrainedModel)

LargeState = tuple  # tuple over blocks of mLSTMCellState(C, n, m)

# transformers' xLSTMConfig fields that choose its own kernels: no meaning here
HF_KERNEL_FIELDS = ("chunkwise_kernel", "sequence_kernel", "step_kernel", "mode", "return_last_states",
                    "autocast_kernel_dtype", "inference_state_dtype", "max_inference_chunksize", "use_cache")


@accept_hf_names({"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks"}, ignored=HF_KERNEL_FIELDS)
@dataclass
class xLSTMLargeConfig:
    embedding_dim: int = 4096
    num_heads: int = 8
    num_blocks: int = 32
    vocab_size: int = 50304
    use_bias: bool = False
    norm_eps: float = 1e-6
    norm_reduction_force_float32: bool = True
    add_out_norm: bool = True
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    chunk_size: int = 64
    eps: float = 1e-6
    ffn_proj_factor: float = 2.6667
    ffn_round_up_to_multiple_of: int = 64
    gate_soft_cap: float | None = 15.0
    output_logit_soft_cap: float | None = 30.0
    weight_mode: str = "single"
    # flashxlstm additions
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    pad_token_id: int | None = 1
    eos_token_id: int | None = 2
    qk_dim: int | None = None  # explicit sizes, set from checkpoint tensor shapes when they disagree
    v_dim: int | None = None
    ffn_dim: int | None = None
    backend: str = "auto"  # flashxlstm.ops.mlstm backend for sequences
    step_backend: str = "auto"  # flashxlstm.ops.mlstm_step backend for single tokens
    norm_gate_backend: str = "auto"  # the training path's fused head norm x output gate (mLSTMLargeLayer.norm_gate)
    keep_h_lo: bool = False  # flashxlstm.ops.mlstm's keep_h_lo in training (mLSTMLargeLayer: why False)

    def __post_init__(self):
        for name in ("embedding_dim", "num_heads", "num_blocks", "vocab_size", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"xLSTMLargeConfig: {name} must be a positive int, got {value!r}")
        if self.weight_mode not in ("single", "fused"):
            raise ValueError(f"xLSTMLargeConfig: weight_mode must be 'single' or 'fused', got {self.weight_mode!r}")
        if not self.norm_reduction_force_float32:
            raise ValueError("xLSTMLargeConfig: flashxlstm always reduces norms in float32 (norm_reduction_force_float32=True)")
        for name, size in (("qk_dim", self.qk_head_dim_total), ("v_dim", self.v_head_dim_total)):
            if size % self.num_heads:
                raise ValueError(f"xLSTMLargeConfig: {name} = {size} is not a multiple of num_heads = {self.num_heads}")

    @property
    def qk_head_dim_total(self) -> int:
        return self.qk_dim or int(self.embedding_dim * self.qk_dim_factor)

    @property
    def v_head_dim_total(self) -> int:
        return self.v_dim or int(self.embedding_dim * self.v_dim_factor)

    @property
    def ffn_hidden_dim(self) -> int:
        return self.ffn_dim or round_up(self.embedding_dim * self.ffn_proj_factor, self.ffn_round_up_to_multiple_of)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "xLSTMLargeConfig":
        """Build from NX-AI and/or transformers field names; unknown (legacy, kernel) fields are ignored."""
        d = dict(d)
        for ours, theirs in (("embedding_dim", "hidden_size"), ("num_blocks", "num_hidden_layers")):
            if d.get(ours) is None and d.get(theirs) is not None:
                d[ours] = d[theirs]
            elif d.get(ours) is not None and d.get(theirs) is not None and d[ours] != d[theirs]:
                raise ValueError(f"config: {ours} = {d[ours]} disagrees with {theirs} = {d[theirs]}")
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = d["eos_token_id"][0] if d["eos_token_id"] else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def xlstm_7b_config(**overrides) -> xLSTMLargeConfig:
    """The NX-AI/xLSTM-7b architecture (6,865,424,896 parameters)."""
    return xLSTMLargeConfig(**overrides)


class mLSTMLargeBlock(nn.Module):
    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        c = config
        self.norm_mlstm = RMSNorm(c.embedding_dim, eps=c.norm_eps, bias=c.use_bias)
        self.mlstm_layer = mLSTMLargeLayer(
            c.embedding_dim, c.num_heads, qk_dim=c.qk_head_dim_total, v_dim=c.v_head_dim_total, bias=c.use_bias,
            norm_eps=c.norm_eps, gate_soft_cap=c.gate_soft_cap, weight_mode=c.weight_mode, chunk_size=c.chunk_size,
            eps=c.eps, backend=c.backend, step_backend=c.step_backend, norm_gate_backend=c.norm_gate_backend,
            keep_h_lo=c.keep_h_lo,
        )
        self.norm_ffn = RMSNorm(c.embedding_dim, eps=c.norm_eps, bias=c.use_bias)
        self.ffn = SwiGLU(c.embedding_dim, c.ffn_hidden_dim, bias=c.use_bias, weight_mode=c.weight_mode)

    def forward(self, x: Tensor, state=None, attention_mask: Tensor | None = None, state_out=None, cu_seqlens=None):
        y, state = self.mlstm_layer(self.norm_mlstm(x), state, attention_mask, state_out, cu_seqlens=cu_seqlens)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state

    def decode(self, x: Tensor, pending: Tensor | None, state, state_out=None):
        """One token through the fused Triton kernels. The residual stream arrives as x + pending (pending: the
        previous block's FFN output, None for the first block) and leaves the same way, so each residual add
        shares a launch with the RMSNorm after it: returns (x, ffn output, new state)."""
        x, xn = add_rms_norm(x, pending, self.norm_mlstm.weight, self.norm_mlstm.bias, self.norm_mlstm.eps,
                             backend="triton")
        y, state = self.mlstm_layer.decode(xn, state, state_out)
        x, xn = add_rms_norm(x, y, self.norm_ffn.weight, self.norm_ffn.bias, self.norm_ffn.eps, backend="triton")
        return x, self.ffn(xn, fused_glue=True), state


class xLSTMLargeBackbone(nn.Module):
    def __init__(self, config: xLSTMLargeConfig):
        super().__init__()
        # _weight skips nn.Embedding's own init: xLSTMLarge.init_weights sets it (and skips the meta device)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_dim,
                                       _weight=torch.empty(config.vocab_size, config.embedding_dim))
        self.blocks = nn.ModuleList(mLSTMLargeBlock(config) for _ in range(config.num_blocks))
        self.out_norm = RMSNorm(config.embedding_dim, eps=config.norm_eps, bias=config.use_bias) if config.add_out_norm else None
        self.fused_decode = True  # single tokens through the fused Triton glue when the step backend is Triton

    def forward(self, input_ids: Tensor, state: LargeState | None = None, attention_mask: Tensor | None = None,
                state_out: LargeState | None = None, cu_seqlens: Tensor | None = None):
        x = self.embeddings(input_ids)
        if cu_seqlens is None and self.decodes_fused(input_ids, state, attention_mask):
            return self.decode(x, state, state_out)
        new_state = []
        for idx, block in enumerate(self.blocks):
            x, block_state = block(x, None if state is None else state[idx], attention_mask,
                                   None if state_out is None else state_out[idx], cu_seqlens=cu_seqlens)
            new_state.append(block_state)
        if self.out_norm is not None:
            x = self.out_norm(x)
        return x, tuple(new_state)

    def decodes_fused(self, input_ids: Tensor, state: LargeState | None, attention_mask: Tensor | None) -> bool:
        """Whether forward takes the fused single-token path (see mLSTMLargeLayer.uses_fused_decode)."""
        return (self.fused_decode and state is not None
                and self.blocks[0].mlstm_layer.uses_fused_decode(input_ids, state[0], attention_mask))

    def decode(self, x: Tensor, state: LargeState, state_out: LargeState | None = None):
        """The single-token path with fused Triton glue (see mLSTMLargeBlock.decode); same result as forward."""
        new_state, pending = [], None
        for idx, block in enumerate(self.blocks):
            x, pending, block_state = block.decode(x, pending, state[idx], None if state_out is None else state_out[idx])
            new_state.append(block_state)
        if self.out_norm is None:
            return x + pending, tuple(new_state)
        norm = self.out_norm
        return add_rms_norm(x, pending, norm.weight, norm.bias, norm.eps, backend="triton")[1], tuple(new_state)


class xLSTMLarge(xLSTMPreTrainedModel):
    """The xLSTM-7B family language model. See the module docstring for the interface."""

    config_class = xLSTMLargeConfig

    def __init__(self, config: xLSTMLargeConfig | None = None, **overrides):
        super().__init__()
        config = config or xLSTMLargeConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.backbone = xLSTMLargeBackbone(config)
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        if not self.lm_head.weight.is_meta:  # nothing to initialise on the meta device (and it is slow there)
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The intended initialisation: small init (std sqrt(2 / 5D)) for embeddings and projections,
        Wang init (std 2 / (L sqrt(fan_in))) for the projections into the residual stream, gate weights 0
        with input-gate bias -10 and forget-gate biases linspace(3, 6, NH), norms 1, other biases 0."""
        c = self.config
        D, NH, L = c.embedding_dim, c.num_heads, c.num_blocks
        small = math.sqrt(2 / (5 * D))
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, small)
            elif isinstance(module, (RMSNorm, MultiHeadLayerNorm)):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            if not isinstance(module, nn.Linear):
                continue
            if module.bias is not None:
                module.bias.zero_()
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("igate_preact", "fgate_preact", "ifgate_preact"):
                module.weight.zero_()
                forget = torch.linspace(3.0, 6.0, NH)
                bias = {"igate_preact": torch.full((NH,), -10.0), "fgate_preact": forget,
                        "ifgate_preact": torch.cat([torch.full((NH,), -10.0), forget])}[leaf]
                module.bias.copy_(bias)
            elif leaf == "proj_down":
                module.weight.normal_(0.0, 2 / L / math.sqrt(module.weight.shape[1]))
            elif leaf == "out_proj":
                module.weight.normal_(0.0, 2 / L / math.sqrt(D))
            elif module is not self.lm_head or not c.tie_word_embeddings:
                module.weight.normal_(0.0, small)

    def forward(
        self, input_ids: Tensor, state: LargeState | None = None, attention_mask: Tensor | None = None,
        labels: Tensor | None = None, *, logits_to_keep: int = 0, state_out: LargeState | None = None,
        cu_seqlens: Tensor | None = None, return_dict: bool | None = None, use_cache: bool | None = None,
        token_type_ids: Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, S) -> output with logits (B, S, V) float32 (the last `logits_to_keep` positions if > 0),
        the new state and, with labels, the loss. return_dict=False: the tuple (loss, logits, state) without
        None entries; use_cache=False leaves the state out.

        attention_mask (B, S): 0 marks padding that must not touch the state (left padding for generation).
        cu_seqlens: packed documents in (B, S) rows (offsets over the flattened tokens, every row starting a
        document), each from an empty state (nn/packing.py).
        state_out: for one token (S == 1) with a state, preallocated buffers shaped like the state that receive
        the new state (CUDA-graph decoding ping-pongs two such sets); they must not overlap `state`.
        """
        check_input_ids("xLSTMLarge", input_ids, self.config.vocab_size)
        check_token_type_ids("xLSTMLarge", token_type_ids)
        mask = check_attention_mask("xLSTMLarge", attention_mask, input_ids)
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != self.config.num_blocks):
            raise ValueError(f"xLSTMLarge: state must be a tuple of {self.config.num_blocks} per-block (C, n, m) tuples")
        if state_out is not None and (state is None or input_ids.shape[1] != 1):
            raise ValueError("xLSTMLarge: state_out needs a state and a single token (S == 1)")
        if labels is not None and logits_to_keep:
            raise ValueError("xLSTMLarge: labels need the logits of every position; do not pass logits_to_keep")
        if cu_seqlens is not None and mask is not None:
            raise ValueError("xLSTMLarge: pass cu_seqlens (packed documents) or attention_mask (padding), not both")
        fused = cu_seqlens is None and self.backbone.decodes_fused(input_ids, state, mask)
        x, state = self.backbone(input_ids, state, mask, state_out, cu_seqlens=cu_seqlens)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = linear_decode(x, self.lm_head.weight) if fused else self.lm_head(x)
        logits = soft_cap(logits.float(), self.config.output_logit_soft_cap)
        return self._finish_forward(logits, state, labels, mask, return_dict, use_cache)

    def _save(self, path, max_shard_size: int | str = "5GB", for_transformers: bool = True) -> None:
        """Write the Hugging Face hub layout (config.json + safetensors shards + index), atomically; see
        flashxlstm.checkpoints.hub.save_large_pretrained for `for_transformers`."""
        hub.save_large_pretrained(self, path, max_shard_size=max_shard_size, for_transformers=for_transformers)

    @classmethod
    def load_checkpoint(cls, directory, dtype: torch.dtype | str | None = None, device=None,
                        **overrides) -> "xLSTMLarge":
        """Load an xLSTM-7B-family checkpoint directory (hub or NX-AI layout, flashxlstm.checkpoints.pretrained)
        by streaming its tensors into a model allocated once in the target dtype and device; eval mode.
        Sizes the config derives from factors (qk_dim, v_dim, FFN width) follow the tensors when they differ."""
        path = checked_directory(resolve_directory(directory), "from_pretrained")
        config_dict = layouts.read_large_config(path)
        files = layouts.weight_files(path)
        shapes = layouts.tensor_shapes(files)
        probe = xLSTMLargeConfig.from_dict(config_dict)
        derived = {"qk_dim": probe.qk_head_dim_total, "v_dim": probe.v_head_dim_total, "ffn_dim": probe.ffn_hidden_dim}
        sizes = {k: v for k, v in layouts.sizes_from_shapes(shapes).items() if v != derived[k]}
        config = xLSTMLargeConfig.from_dict({**config_dict, **sizes, **overrides})
        dtype = layouts.as_dtype(dtype) or next(iter(shapes.values()))[1]
        with torch.device("meta"):
            model = cls(config)
        model = model.to(dtype).to_empty(device=device or "cpu")
        model._fill(layouts.read_tensors(files), str(path))
        return model.eval()

    def _fill(self, items, source: str) -> None:
        """Copy (key, tensor) items of any naming/form the 7B layouts use into this model, strictly."""
        if self.config.tie_word_embeddings:  # to_empty unties: tie again
            self.lm_head.weight = self.backbone.embeddings.weight
        params = self.state_dict(keep_vars=True)
        load_strict(params, layouts.single_form_items(items, self.config), source,
                    places=layouts.large_places(params, self.config))

    def converted(self, **overrides) -> "xLSTMLarge":
        """A copy with config fields changed (e.g. weight_mode="fused"), same dtype, device and weights."""
        ref = self.backbone.embeddings.weight
        with torch.device("meta"):
            new = type(self)(dataclasses.replace(self.config, **overrides))
        new = new.to(ref.dtype).to_empty(device=ref.device)
        new._fill(self.state_dict().items(), "model")
        return new.train(self.training)
