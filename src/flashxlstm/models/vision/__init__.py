"""Vision models: Vision-LSTM (ViL) and a DeiT-style ViT baseline over the same patch embedding."""
from .patch import PatchEmbed
from .vil import ViL, ViLBlock, ViLConfig
from .vit import ViT, ViTConfig, matched_vit, num_parameters

__all__ = ["PatchEmbed", "ViL", "ViLBlock", "ViLConfig", "ViT", "ViTConfig", "matched_vit", "num_parameters"]
