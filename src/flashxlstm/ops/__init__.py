"""Pure tensor functions: the xLSTM cells in every form. Nothing here holds parameters or state."""
from .mlstm_cell import mlstm, mlstm_reference, mlstm_step
from .slstm_cell import slstm, slstm_reference, slstm_step

__all__ = ["mlstm", "mlstm_step", "mlstm_reference", "slstm", "slstm_step", "slstm_reference"]
