"""The fused LSTM cell (pointwise part of one step): compiled op, fake kernel, reference."""
from __future__ import annotations

import torch

from .. import backend

OP = backend.register_op("lstm_cell", cpp=True)


def lstm_cell_reference(gates: torch.Tensor, c_prev: torch.Tensor):
    """Plain torch: gates [B, 4H] pre-activations (order i, f, g, o), c_prev [B, H].

    Returns (h, c, activated gates [B, 4H])."""
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev + i * g
    h = o * c.tanh()
    return h, c, torch.cat([i, f, g, o], dim=1)


def _check(gates: torch.Tensor, c_prev: torch.Tensor):
    if gates.dim() != 2 or c_prev.dim() != 2:
        raise ValueError(f"lstm_cell: gates must be [batch, 4*hidden] and c_prev [batch, hidden], "
                         f"got shapes {tuple(gates.shape)} and {tuple(c_prev.shape)}")
    if gates.shape[0] != c_prev.shape[0] or gates.shape[1] != 4 * c_prev.shape[1]:
        raise ValueError(f"lstm_cell: shapes do not match: gates {tuple(gates.shape)}, c_prev "
                         f"{tuple(c_prev.shape)} (gates needs {4 * c_prev.shape[1]} columns)")


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor):
    """Forward of the fused cell on the selected backend (no autograd; the decoder op owns that)."""
    _check(gates, c_prev)
    if backend.select(OP, gates.device) == "cpp":
        return torch.ops.fastvae.lstm_cell_forward(gates, c_prev)
    return lstm_cell_reference(gates, c_prev)


def _register_fake():
    if backend.compiled_core() is None:
        return

    @torch.library.register_fake("fastvae::lstm_cell_forward")
    def _(gates, c_prev):
        return torch.empty_like(c_prev), torch.empty_like(c_prev), torch.empty_like(gates)


_register_fake()
