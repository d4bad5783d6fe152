"""The training loop, optimiser groups and schedules: plain PyTorch, nothing hidden."""
