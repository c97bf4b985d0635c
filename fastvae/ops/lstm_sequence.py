"""The LSTM recurrence over a whole sequence, and one LSTM step: compiled ops, fake kernels, references.

Shapes (gate order i, f, g, o as in torch.nn.LSTM; N = B * K rows):

  lstm_sequence(input_gates [B, T, 4H], sample_gates [B, K, 4H], h0 [B, K, H], c0 [B, K, H], weight_hh [4H, H])
      -> (h_all [B, K, T, H], c_last [B, K, H])
      gates(b, k, t) = input_gates[b, t] + sample_gates[b, k] + h(b, k, t-1) @ weight_hh^T
  input_gates holds the input projections of every step (biases folded in) and is shared by the K samples of a
  row; sample_gates holds a per-sample term added at every step (the decoder's latent code projected once).

  lstm_step(input_gates [N, 4H], h [N, H], c [N, H], weight_hh [4H, H]) -> (h_new, c_new)
"""
from __future__ import annotations

import torch

from .. import backend

SEQUENCE_OP = backend.register_op("lstm_sequence", cpp=True)
STEP_OP = backend.register_op("lstm_step", cpp=True)


# ------------------------------------------------------------------ references (plain torch)
def _cell(gates: torch.Tensor, c_prev: torch.Tensor):
    i, f, g, o = gates.chunk(4, dim=-1)
    c = f.sigmoid() * c_prev + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def lstm_step_reference(input_gates, h, c, weight_hh, compute_dtype=None):
    """One step in plain torch: gates = input_gates + h @ weight_hh^T; returns (h_new, c_new).
    compute_dtype (e.g. torch.bfloat16): the GEMM in that dtype, as autocast runs it."""
    if compute_dtype is None:
        return _cell(torch.addmm(input_gates, h, weight_hh.t()), c)
    recurrent = (h.to(compute_dtype) @ weight_hh.to(compute_dtype).t()).to(input_gates.dtype)
    return _cell(input_gates + recurrent, c)


def lstm_sequence_reference(input_gates, sample_gates, h0, c0, weight_hh, compute_dtype=None):
    """The whole recurrence in plain torch (a Python loop over time); returns (h_all [B, K, T, H], c_last [B, K, H]).
    compute_dtype: the recurrent GEMMs in that dtype (what weight_hh_compute does in the compiled op)."""
    B, T, G = input_gates.shape
    K = sample_gates.shape[1]
    H = G // 4
    h = h0.reshape(B * K, H)
    c = c0.reshape(B * K, H)
    per_sample = sample_gates.reshape(B * K, G)
    hs = []
    for t in range(T):
        step_input = input_gates[:, t].repeat_interleave(K, dim=0) + per_sample
        h, c = lstm_step_reference(step_input, h, c, weight_hh, compute_dtype)
        hs.append(h)
    h_all = torch.stack(hs, 1).view(B, K, T, H) if T else input_gates.new_zeros(B, K, 0, H)
    return h_all, c.view(B, K, H)


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
        raise TypeError("lstm_sequence: all tensors must share one dtype, got "
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
def _select(op_name: str, device_type: str) -> str:
    # traceable: under torch.compile the choice is made when the graph is traced (the compiled op has a fake
    # kernel and an autograd registration, so a traced graph holds it)
    return backend.select(op_name, device_type)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _autocast_dtype(tensor):
    """The autocast dtype when autocast is on for this tensor's device, else None."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def lstm_sequence(input_gates, sample_gates, h0, c0, weight_hh, weight_hh_compute=None):
    """Runs the recurrence on the selected backend -> (h_all [B, K, T, H], c_last [B, K, H]).

    Differentiable in every argument. The compiled op saves its activations only when a gradient is
    needed, and its backward skips the gradients autograd does not ask for (no weight-gradient GEMM
    when weight_hh needs none, e.g. while only the encoder is trained).
    weight_hh_compute: a bfloat16 copy of weight_hh (fastvae.nn.precision.WeightCopies) that the per-step
    GEMMs read, forward and backward; the state, the pointwise math and the gradients stay float32."""
    dtype = _autocast_dtype(input_gates)
    if dtype is not None:
        # Under autocast the projections arrive in the low-precision dtype while weight_hh stays float32
        # (custom ops are not on autocast's lists): run the recurrence in one dtype with autocast off;
        # the compiled kernels compute in float32 internally.
        with torch.autocast(input_gates.device.type, enabled=False):
            return lstm_sequence(*(t.to(dtype) for t in (input_gates, sample_gates, h0, c0, weight_hh)))
    _check_sequence(input_gates, sample_gates, h0, c0, weight_hh)
    if weight_hh_compute is not None and (not isinstance(weight_hh_compute, torch.Tensor)
                                          or weight_hh_compute.shape != weight_hh.shape
                                          or not weight_hh_compute.is_floating_point()
                                          or weight_hh_compute.device != weight_hh.device):
        raise ValueError(f"lstm_sequence: weight_hh_compute must be a floating-point tensor shaped like weight_hh "
                         f"{tuple(weight_hh.shape)} on {weight_hh.device}")
    if _select(SEQUENCE_OP.name, input_gates.device.type) == "cpp":
        save = _needs_grad(input_gates, sample_gates, h0, c0, weight_hh)
        h_all, c_last, _, _ = torch.ops.fastvae.lstm_sequence_forward(input_gates, sample_gates, h0, c0, weight_hh,
                                                                      save, weight_hh_compute)
        return h_all, c_last
    compute = None if weight_hh_compute is None else weight_hh_compute.dtype
    return lstm_sequence_reference(input_gates, sample_gates, h0, c0, weight_hh, compute)


def lstm_step(input_gates, h, c, weight_hh):
    """One LSTM step on the selected backend -> (h_new, c_new); differentiable in every argument."""
    dtype = _autocast_dtype(h)
    if dtype is not None:  # as in lstm_sequence
        with torch.autocast(h.device.type, enabled=False):
            return lstm_step(*(t.to(dtype) for t in (input_gates, h, c, weight_hh)))
    _check_step(input_gates, h, c, weight_hh)
    if _select(STEP_OP.name, h.device.type) == "cpp":
        h_new, c_new, _ = torch.ops.fastvae.lstm_step_forward(input_gates, h, c, weight_hh)
        return h_new, c_new
    return lstm_step_reference(input_gates, h, c, weight_hh)


# ------------------------------------------------------------------ autograd and fake kernels of the compiled ops
def _sequence_setup(ctx, inputs, output):
    _, _, h0, c0, weight_hh, save, *rest = inputs
    h_all, _, c_all, act = output
    ctx.saved = save
    ctx.weight_low = rest[0] if rest else None  # the low-precision copy: an input without a gradient
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h0, c0, weight_hh, h_all, c_all, act)


def _sequence_backward(ctx, grad_h_all, grad_c_last, _grad_c_all, _grad_act):
    if not ctx.saved:
        raise RuntimeError("fastvae.lstm_sequence: backward through a forward that ran with save_for_backward=False; "
                           "call the op with save_for_backward=True (fastvae.ops.lstm_sequence does this when a "
                           "gradient is needed)")
    h0, c0, weight_hh, h_all, c_all, act = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [needs[0], needs[1], needs[4]]
    grad_input, grad_sample, grad_h0, grad_c0, grad_weight = torch.ops.fastvae.lstm_sequence_backward(
        grad_h_all, grad_c_last, h0, c0, weight_hh, h_all, c_all, act, mask, ctx.weight_low)
    return (grad_input if needs[0] else None, grad_sample if needs[1] else None, grad_h0 if needs[2] else None,
            grad_c0 if needs[3] else None, grad_weight if needs[4] else None, None, None)


def _step_setup(ctx, inputs, output):
    _, h, c, weight_hh = inputs
    _, c_new, act = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h, c, c_new, act, weight_hh)


def _step_backward(ctx, grad_h_new, grad_c_new, _grad_act):
    h, c, c_new, act, weight_hh = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_input, grad_h, grad_c, grad_weight = torch.ops.fastvae.lstm_step_backward(
        grad_h_new, grad_c_new, h, c, c_new, act, weight_hh, needs[3])
    return (grad_input if needs[0] else None, grad_h if needs[1] else None, grad_c if needs[2] else None,
            grad_weight if needs[3] else None)


def _register():
    if backend.compiled_core() is None:
        return

    @torch.library.register_fake("fastvae::lstm_sequence_forward")
    def _(input_gates, sample_gates, h0, c0, weight_hh, save_for_backward, weight_hh_compute=None):
        B, T, G = input_gates.shape
        K, H = sample_gates.shape[1], G // 4
        new = input_gates.new_empty
        if save_for_backward:
            return new(B, K, T, H), new(B, K, H), new(B, K, T, H), new(B, K, T, G)
        return new(B, K, T, H), new(B, K, H), new(0), new(0)

    @torch.library.register_fake("fastvae::lstm_sequence_backward")
    def _(grad_h_all, grad_c_last, h0, c0, weight_hh, h_all, c_all, act, output_mask, weight_hh_compute=None):
        B, K, T, H = h_all.shape
        new = h_all.new_empty
        return (new(B, T, 4 * H) if output_mask[0] else new(0), new(B, K, 4 * H) if output_mask[1] else new(0),
                new(B, K, H), new(B, K, H), new(4 * H, H) if output_mask[2] else new(0))

    @torch.library.register_fake("fastvae::lstm_step_forward")
    def _(input_gates, h, c, weight_hh):
        return h.new_empty(h.shape), h.new_empty(h.shape), h.new_empty(input_gates.shape)

    @torch.library.register_fake("fastvae::lstm_step_backward")
    def _(grad_h_new, grad_c_new, h, c, c_new, act, weight_hh, need_weight_grad):
        new = h.new_empty
        return new(act.shape), new(h.shape), new(h.shape), new(weight_hh.shape) if need_weight_grad else new(0)

    torch.library.register_autograd("fastvae::lstm_sequence_forward", _sequence_backward,
                                    setup_context=_sequence_setup)
    torch.library.register_autograd("fastvae::lstm_step_forward", _step_backward, setup_context=_step_setup)


_register()
