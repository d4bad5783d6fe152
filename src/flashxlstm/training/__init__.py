"""The training loop, optimiser groups and schedules: plain PyTorch, nothing hidden.

    from flashxlstm.training import TrainConfig, train, resume_training
    result = train(TrainConfig(steps=500), "runs/mine")      # byte-level LM on the pydoc topics
    result = resume_training("runs/mine", {"steps": 1000})   # continue it exactly
"""
from .config import TrainConfig
from .loop import TrainResult, resume_training, train

__all__ = ["TrainConfig", "TrainResult", "train", "resume_training"]
