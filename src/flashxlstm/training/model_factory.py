"""The byte-level xLSTM language model a TrainConfig describes."""
from __future__ import annotations

from ..data import VOCAB_SIZE
from ..models.xlstm_lm import xLSTMLM, xLSTMLMConfig
from .config import TrainConfig


def model_config(config: TrainConfig) -> xLSTMLMConfig:
    """The NeurIPS LM config of a training run (vocabulary: the 256 byte values)."""
    try:
        return xLSTMLMConfig(
            vocab_size=VOCAB_SIZE,
            embedding_dim=config.embedding_dim,
            num_blocks=config.num_blocks,
            slstm_at=config.block_pattern,
            mlstm_num_heads=config.num_heads,
            slstm_num_heads=config.slstm_num_heads,
            tie_weights=config.tie_weights,
            dropout=config.dropout,
        )
    except ValueError as e:
        raise ValueError(f"inconsistent model settings: {e}") from None


def build_model(config: TrainConfig) -> xLSTMLM:
    """A freshly initialised model (official initialisation) for `config`; call after seeding."""
    return xLSTMLM(model_config(config))
