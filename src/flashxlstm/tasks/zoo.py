"""The models of the synthetic experiments, built by name, all with the same call: `logits = model(input_ids)`.

Names: "transformer" (Llama-style, RoPE + SDPA), "lstm" (plain multi-layer nn.LSTM) and "xlstm[a:b]", the
paper's notation for the ratio of mLSTM to sLSTM blocks: with 2 blocks, "xlstm[0:1]" is two sLSTM blocks,
"xlstm[1:0]" two mLSTM blocks and "xlstm[1:1]" one of each (mLSTM first, sLSTM second, as the official
parity_xlstm11 config: slstm_at=[1]).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

MODEL_NAMES = ("transformer", "lstm", "xlstm[0:1]", "xlstm[1:0]", "xlstm[1:1]")


@dataclass
class ModelSize:
    """Width and depth shared by every model of a comparison."""

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1  # xLSTM heads (the official formal-language configs use 1); the Transformer uses >= 4
    context_length: int = 256
    mlstm_backend: str = "auto"  # the xLSTM's mLSTM / sLSTM kernels ("auto": Triton on CUDA)
    slstm_backend: str = "auto"


class StatelessLM(nn.Module):
    """Wraps a model returning (logits, state) so that it returns logits only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        logits, _ = self.model(input_ids)
        return logits


def build_model(name: str, vocab_size: int, size: ModelSize | None = None) -> nn.Module:
    """A freshly initialised model `name` (see MODEL_NAMES) for a vocabulary of `vocab_size` tokens."""
    size = size or ModelSize()
    key = name.strip().lower().replace(" ", "")
    if key in ("transformer", "llama"):
        from flashxlstm.models.transformer import TransformerConfig, TransformerLM

        heads = max(4, size.num_heads)
        while size.embedding_dim % heads or (size.embedding_dim // heads) % 2:
            heads -= 1
        return TransformerLM(TransformerConfig(vocab_size=vocab_size, embedding_dim=size.embedding_dim,
                                               num_blocks=size.num_blocks, num_heads=heads))
    if key == "lstm":
        from flashxlstm.models.lstm import LSTMConfig, LSTMLM

        return LSTMLM(LSTMConfig(vocab_size=vocab_size, embedding_dim=size.embedding_dim,
                                 num_layers=size.num_blocks))
    if key.startswith("xlstm"):
        return StatelessLM(_build_xlstm(key, vocab_size, size))
    raise ValueError(f"unknown model {name!r}; expected one of {list(MODEL_NAMES)} or 'xlstm[a:b]'")


def _build_xlstm(ratio: str, vocab_size: int, size: ModelSize) -> nn.Module:
    from flashxlstm.models.xlstm_lm import xLSTMLM, xLSTMLMConfig

    cfg = xLSTMLMConfig(vocab_size=vocab_size, embedding_dim=size.embedding_dim, num_blocks=size.num_blocks,
                        slstm_at=ratio, mlstm_num_heads=size.num_heads, slstm_num_heads=size.num_heads,
                        mlstm_backend=size.mlstm_backend, slstm_backend=size.slstm_backend)
    return xLSTMLM(cfg)
