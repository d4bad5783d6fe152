"""flashxlstm: xLSTM end to end (sLSTM and mLSTM cells, NeurIPS and 7B model families)."""
from . import ops

__version__ = "0.1.0"
__all__ = ["ops"]
