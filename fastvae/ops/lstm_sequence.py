"""The LSTM recurrence over a whole sequence, and one LSTM step: compiled ops, fake kernels, references.

Shapes (gate order i, f, g, o as in torch.nn.LSTM; N = B * K rows):

  lstm_sequence(input_gates [B, T, 4H], sample_gates [B, K, 4H], h0 [B, K, H], c0 [B, K, H], weight_hh [4H, H])
      -> (h_all [B, K, T, H], c_all [B, K, T, H])
      gates(b, k, t) = input_gates[b, t] + sample_gates[b, k] + h(b, k, t-1) @ weight_hh^T
  input_gates holds the input projections of every step (biases folded in) and is shared by the K samples of a
  row; sample_gates holds a per-sample term added at every step (the decoder's latent code projected once).

  lstm_step(input_gates [N, 4H], h [N, H], c [N, H], weight_hh [4H, H]) -> (h_new, c_new)
"""
from __future__ import annotations

import torch

from .. import backend

SEQUENCE_OP = backend.register_op("lstm_sequence", cpp=False)
STEP_OP = backend.register_op("lstm_step", cpp=False)


# ------------------------------------------------------------------ references (plain torch)
def _cell(gates: torch.Tensor, c_prev: torch.Tensor):
    i, f, g, o = gates.chunk(4, dim=-1)
    c = f.sigmoid() * c_prev + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def lstm_step_reference(input_gates, h, c, weight_hh):
    """One step in plain torch: gates = input_gates + h @ weight_hh^T; returns (h_new, c_new)."""
    return _cell(torch.addmm(input_gates, h, weight_hh.t()), c)


def lstm_sequence_reference(input_gates, sample_gates, h0, c0, weight_hh):
    """The whole recurrence in plain torch (a Python loop over time); returns (h_all, c_all) [B, K, T, H]."""
    B, T, G = input_gates.shape
    K = sample_gates.shape[1]
    H = G // 4
    h = h0.reshape(B * K, H)
    c = c0.reshape(B * K, H)
    per_sample = sample_gates.reshape(B * K, G)
    hs, cs = [], []
    for t in range(T):
        step_input = input_gates[:, t].repeat_interleave(K, dim=0) + per_sample
        h, c = lstm_step_reference(step_input, h, c, weight_hh)
        hs.append(h)
        cs.append(c)
    if T == 0:
        empty = input_gates.new_empty(B, K, 0, H)
        return empty, empty.clone()
    return torch.stack(hs, 1).view(B, K, T, H), torch.stack(cs, 1).view(B, K, T, H)


# ------------------------------------------------------------------ argument checks
def _check_sequence(input_gates, sample_gates, h0, c0, weight_hh):
    tensors = {"input_gates": input_gates, "sample_gates": sample_gates, "h0": h0, "c0": c0, "weight_hh": weight_hh}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"lstm_sequence: {name} must be a tensor, got {type(tensor).__name__}")
    if input_gates.dim() != 3 or input_gates.shape[2] % 4 != 0:
        raise ValueError(f"lstm_sequence: input_gates must be [batch, time, 4*hidden], got {tuple(input_gates.shape)}")
    B, _, G = input_gates.shape
    H = G // 4
    if weight_hh.shape != (G, H):
        raise ValueError(f"lstm_sequence: weight_hh must be [4*hidden, hidden] = [{G}, {H}] to match input_gates, "
                         f"got {tuple(weight_hh.shape)}")
    if sample_gates.dim() != 3 or sample_gates.shape[0] != B or sample_gates.shape[2] != G:
        raise ValueError(f"lstm_sequence: sample_gates must be [batch={B}, samples, 4*hidden={G}], "
                         f"got {tuple(sample_gates.shape)}")
    K = sample_gates.shape[1]
    for name, state in (("h0", h0), ("c0", c0)):
        if tuple(state.shape) != (B, K, H):
            raise ValueError(f"lstm_sequence: {name} must be [batch, samples, hidden] = [{B}, {K}, {H}], "
                             f"got {tuple(state.shape)}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise TypeError(f"lstm_sequence: all tensors must share one dtype, got "
                        + ", ".join(f"{n}={t.dtype}" for n, t in tensors.items()))
    if not input_gates.is_floating_point():
        raise TypeError(f"lstm_sequence: expected floating-point tensors, got {input_gates.dtype}")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError("lstm_sequence: all tensors must be on one device, got "
                         + ", ".join(f"{n} on {t.device}" for n, t in tensors.items()))


def _check_step(input_gates, h, c, weight_hh):
    if input_gates.dim() != 2 or h.dim() != 2 or c.dim() != 2:
        raise ValueError(f"lstm_step: input_gates must be [rows, 4*hidden], h and c [rows, hidden]; got shapes "
                         f"{tuple(input_gates.shape)}, {tuple(h.shape)}, {tuple(c.shape)}")
    N, H = h.shape
    if tuple(c.shape) != (N, H) or tuple(input_gates.shape) != (N, 4 * H) or tuple(weight_hh.shape) != (4 * H, H):
        raise ValueError(f"lstm_step: shapes do not match for {N} rows and hidden size {H}: input_gates "
                         f"{tuple(input_gates.shape)} (want {(N, 4 * H)}), c {tuple(c.shape)}, weight_hh "
                         f"{tuple(weight_hh.shape)} (want {(4 * H, H)})")
    if len({input_gates.dtype, h.dtype, c.dtype, weight_hh.dtype}) != 1:
        raise TypeError(f"lstm_step: all tensors must share one dtype, got {input_gates.dtype}, {h.dtype}, "
                        f"{c.dtype}, {weight_hh.dtype}")
    if len({input_gates.device, h.device, c.device, weight_hh.device}) != 1:
        raise ValueError("lstm_step: all tensors must be on one device")


# ------------------------------------------------------------------ public entry points
def lstm_sequence(input_gates, sample_gates, h0, c0, weight_hh):
    """Runs the recurrence on the selected backend; differentiable in every argument."""
    _check_sequence(input_gates, sample_gates, h0, c0, weight_hh)
    return lstm_sequence_reference(input_gates, sample_gates, h0, c0, weight_hh)


def lstm_step(input_gates, h, c, weight_hh):
    """One LSTM step on the selected backend; differentiable in every argument."""
    _check_step(input_gates, h, c, weight_hh)
    return lstm_step_reference(input_gates, h, c, weight_hh)
