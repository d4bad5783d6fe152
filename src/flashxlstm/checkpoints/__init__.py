"""Checkpoint formats and converters (our own, the official packages', the Hugging Face hub's)."""
