"""Low-precision compute with float32 master weights: cached weight copies and the linear layer that uses them.

In `--precision bf16` the optimiser updates float32 parameters; the GEMMs read bfloat16 copies of them. Autocast
re-casts every weight at every use (on a ptb-size step: 4 ms of copies); a `WeightCopies` cache casts a weight
once and re-uses the copy until the parameter changes. A parameter changes in place (an optimiser step, a
`load_state_dict`, a `copy_`), and every in-place change bumps its version counter: the cache compares it, so
a copy is refreshed exactly once per optimiser step and can never be stale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


class WeightCopies:
    """`get(param)`: a detached copy of `param` in `dtype`, re-cast only when `param` has changed."""

    def __init__(self, dtype: torch.dtype):
        if dtype not in LOW_PRECISION_DTYPES:
            raise ValueError(f"WeightCopies: dtype must be one of {LOW_PRECISION_DTYPES}, got {dtype}")
        self.dtype = dtype
        self._copies: dict[int, tuple] = {}
        self.casts = 0  # how many copies were made (tests and profiles read it)

    def get(self, param: torch.Tensor) -> torch.Tensor:
        key = id(param)
        entry = self._copies.get(key)
        version = param._version
        if entry is not None and entry[0] is param and entry[1] == version and entry[2] == param.data_ptr():
            return entry[3]
        with torch.no_grad():
            copy = param.detach().to(self.dtype)
        self._copies[key] = (param, version, param.data_ptr(), copy)
        self.casts += 1
        return copy

    def clear(self) -> None:
        self._copies.clear()


class _LowPrecisionLinear(torch.autograd.Function):
    """y = x @ W^T (+ b) with the GEMMs in the copy's dtype (float32 accumulation), results in x's dtype;
    gradients flow to the float32 master weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_copy):
        x_low = x.to(weight_copy.dtype)
        ctx.save_for_backward(x_low, weight_copy)
        ctx.has_bias = bias is not None
        ctx.out_dtype = x.dtype
        y = F.linear(x_low, weight_copy).to(x.dtype)
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, grad_y):
        x_low, weight_copy = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        grad_low = grad_y.to(weight_copy.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (grad_low @ weight_copy).to(ctx.out_dtype)
        if ctx.needs_input_grad[1]:
            flat_g = grad_low.reshape(-1, grad_low.shape[-1])
            grad_w = (flat_g.t() @ x_low.reshape(-1, x_low.shape[-1])).to(ctx.out_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           copies: WeightCopies | None = None) -> torch.Tensor:
    """F.linear, or with `copies` its GEMMs in the copies' dtype on cached weight copies (same result dtype)."""
    if copies is None:
        return F.linear(x, weight, bias)
    return _LowPrecisionLinear.apply(x, weight, bias, copies.get(weight))


def linear_reference(x, weight, bias=None, dtype=torch.bfloat16):
    """What `linear` with copies computes, the autocast way (weights cast at every use)."""
    y = F.linear(x.to(dtype), weight.to(dtype)).to(x.dtype)
    return y + bias if bias is not None else y
