"""The fused output layer + cross-entropy: compiled op, fake kernel, autograd, plain-torch reference.

    loss, nll = linear_cross_entropy(hidden [N, H], weight [V, H], target [N], row_scale [N])
    nll[i] = logsumexp_v(hidden[i] . weight[v]) - hidden[i] . weight[target[i]]     (not differentiable)
    loss   = sum_i row_scale[i] * nll[i]                                            (differentiable)

The compiled op (`torch.ops.fastvae.linear_cross_entropy_forward`, csrc/linear_cross_entropy.h) runs the
logits GEMM chunk by chunk into a reused buffer, and when a gradient is needed computes d loss / d logits in
the same pass and the grad-hidden / grad-weight GEMMs from it, so the [N, V] logits never exist at once.
Because the row scales (the caller's reduction: a mask and 1/batch) are known at forward time, backward only
multiplies the saved gradients by the incoming scalar.

`weight_compute`: a copy of `weight` in a lower precision (bfloat16) that the GEMMs read instead; gradients
still flow to `weight` (in its dtype), the log-sum-exp and the loss run in float32. The reference does the
same with `weight.to(dtype)` (what autocast does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend
from ..kernels.dtypes import compute_dtype as _accumulation_dtype

LINEAR_CE_OP = backend.register_op("linear_cross_entropy", cpp=True)
# logits the compiled op holds at once (a chunk of rows); 2^22 float32 logits = 16 MiB
DEFAULT_MAX_CHUNK_ELEMS = 2**22


def _check(hidden, weight, target, row_scale, weight_compute, max_chunk_elems):
    for name, value in (("hidden", hidden), ("weight", weight), ("target", target), ("row_scale", row_scale)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"linear_cross_entropy: {name} must be a tensor, got {type(value).__name__}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or weight.shape[0] < 1:
        raise ValueError(f"linear_cross_entropy: hidden must be [rows, H] and weight [vocab >= 1, H]; got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise TypeError(f"linear_cross_entropy: hidden and weight must share one floating-point dtype, got "
                        f"{hidden.dtype} and {weight.dtype}")
    if target.shape != (hidden.shape[0],) or target.dtype != torch.long:
        raise ValueError(f"linear_cross_entropy: target must be an int64 tensor [rows={hidden.shape[0]}], got "
                         f"{target.dtype} of shape {tuple(target.shape)}")
    if row_scale.shape != (hidden.shape[0],) or not row_scale.is_floating_point():
        raise ValueError(f"linear_cross_entropy: row_scale must be a floating-point tensor [rows={hidden.shape[0]}], "
                         f"got {row_scale.dtype} of shape {tuple(row_scale.shape)}")
    if weight_compute is not None:
        if not isinstance(weight_compute, torch.Tensor) or weight_compute.shape != weight.shape \
                or not weight_compute.is_floating_point():
            raise ValueError("linear_cross_entropy: weight_compute must be a floating-point tensor shaped like weight "
                             f"{tuple(weight.shape)}")
    devices = {t.device for t in (hidden, weight, target, row_scale)}
    if weight_compute is not None:
        devices.add(weight_compute.device)
    if len(devices) != 1:
        raise ValueError(f"linear_cross_entropy: all tensors must be on one device, got {sorted(map(str, devices))}")
    if isinstance(max_chunk_elems, bool) or not isinstance(max_chunk_elems, int) or max_chunk_elems < 1:
        raise ValueError(f"linear_cross_entropy: max_chunk_elems must be a positive int, got {max_chunk_elems!r}")


def linear_cross_entropy_reference(hidden, weight, target, row_scale=None, *, weight_compute=None):
    """The same (loss, nll) in plain torch: F.linear then F.cross_entropy, the logits materialised."""
    acc = _accumulation_dtype(hidden.dtype)
    if row_scale is None:
        row_scale = torch.ones(hidden.shape[0], dtype=acc, device=hidden.device)
    compute = weight.dtype if weight_compute is None else weight_compute.dtype
    logits = F.linear(hidden.to(compute), weight.to(compute)).to(acc)
    nll = F.cross_entropy(logits, target, reduction="none")
    return (nll * row_scale.to(acc)).sum(), nll.detach()


def linear_cross_entropy(hidden, weight, target, row_scale=None, *, weight_compute=None,
                         max_chunk_elems: int = DEFAULT_MAX_CHUNK_ELEMS):
    """(loss, nll): loss = sum_i row_scale[i] * nll[i] (a differentiable scalar), nll [N] per row (detached).

    row_scale None: all ones. Rows with scale 0 (padding) add nothing to the loss or the gradients (their
    target must still be a valid id). Runs the compiled op where it is built, else the reference."""
    acc = _accumulation_dtype(hidden.dtype) if isinstance(hidden, torch.Tensor) else None
    if row_scale is None and acc is not None:
        row_scale = torch.ones(hidden.shape[0], dtype=acc, device=hidden.device)
    _check(hidden, weight, target, row_scale, weight_compute, max_chunk_elems)
    if _use_compiled_op(hidden.device.type):
        grad_on = torch.is_grad_enabled()
        mask = [grad_on and hidden.requires_grad, grad_on and weight.requires_grad]
        loss, nll, _, _ = torch.ops.fastvae.linear_cross_entropy_forward(
            hidden, weight, weight_compute, target, row_scale.to(acc), mask, max_chunk_elems)
        return loss, nll
    return linear_cross_entropy_reference(hidden, weight, target, row_scale, weight_compute=weight_compute)


def _use_compiled_op(device_type: str) -> bool:
    # traceable: under torch.compile the choice is made when the graph is traced; the compiled op has a fake
    # kernel and an autograd registration, so a traced graph holds it
    return backend.select(LINEAR_CE_OP, device_type) == backend.CPP


# ------------------------------------------------------------------ autograd and fake kernel of the compiled op
def _setup(ctx, inputs, output):
    _, _, _, _, _, grad_mask, _ = inputs
    _, nll, grad_hidden, grad_weight = output
    ctx.grad_mask = tuple(grad_mask)
    ctx.mark_non_differentiable(nll, grad_hidden, grad_weight)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_hidden, grad_weight)


def _backward(ctx, grad_loss, _grad_nll, _grad_gh, _grad_gw):
    needs = ctx.needs_input_grad
    if (needs[0] and not ctx.grad_mask[0]) or (needs[1] and not ctx.grad_mask[1]):
        raise RuntimeError("fastvae.linear_cross_entropy: backward through a forward that computed no gradient for "
                           "an input that needs one; call it with grad_mask set (fastvae.ops.linear_cross_entropy "
                           "does this)")
    grad_hidden, grad_weight = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None, None, None
    if type(grad_loss) is torch.Tensor and grad_loss.device.type == "cpu" and float(grad_loss) == 1.0:
        # loss.backward() of a sum that holds this loss unscaled: the saved gradients are the answer, no pass
        # over them (a CPU read costs nothing; on a GPU it would be a sync, and a traced graph (fake tensors,
        # a subclass) cannot branch on a value: there they are always scaled)
        return (grad_hidden if needs[0] else None, grad_weight if needs[1] else None, None, None, None, None, None)
    return (grad_hidden * grad_loss.to(grad_hidden.dtype) if needs[0] else None,
            grad_weight * grad_loss.to(grad_weight.dtype) if needs[1] else None,
            None, None, None, None, None)


def _register():
    if backend.compiled_core() is None:
        return

    @torch.library.register_fake("fastvae::linear_cross_entropy_forward")
    def _(hidden, weight, weight_compute, target, row_scale, grad_mask, max_chunk_elems):
        acc = _accumulation_dtype(weight.dtype)
        N, H = hidden.shape
        return (hidden.new_empty((), dtype=acc), hidden.new_empty(N, dtype=acc),
                hidden.new_empty(N, H) if grad_mask[0] else hidden.new_empty(0),
                weight.new_empty(weight.shape) if grad_mask[1] else weight.new_empty(0))

    torch.library.register_autograd("fastvae::linear_cross_entropy_forward", _backward, setup_context=_setup)


_register()
