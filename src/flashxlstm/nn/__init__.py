"""Layers and blocks: thin nn.Modules that project, call one op, and normalise."""
from .state import detach_state, map_state, state_to

__all__ = ["detach_state", "map_state", "state_to"]
