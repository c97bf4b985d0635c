"""Python bindings of the compiled operators in `fastvae._C` (torch.ops.fastvae.*)."""
from . import lstm_cell as lstm_cell_module
from .linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from .lstm_cell import lstm_cell, lstm_cell_reference
from .lstm_sequence import lstm_sequence, lstm_sequence_reference, lstm_step, lstm_step_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference", "lstm_cell", "lstm_cell_module",
           "lstm_cell_reference", "lstm_sequence", "lstm_sequence_reference", "lstm_step", "lstm_step_reference"]
