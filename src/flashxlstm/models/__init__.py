"""Model families: one module per family, each a config dataclass plus the model."""
