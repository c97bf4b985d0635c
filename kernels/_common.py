"""Shared pieces of the latent-op kernel modules: the optional Triton import and dtype rules.

Triton is optional (it is a dependency on Linux x86_64 only), while every kernel module also
holds the plain-torch reference of its op, which must import everywhere. So the modules take
`triton`, `tl` and `jit` from here: without Triton, `jit` leaves the function undecorated and
`HAS_TRITON` is False (fastvae.backend then never selects the Triton path).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the references still work
    triton = None
    HAS_TRITON = False

    class _NoTritonLanguage:
        constexpr = object  # only read by annotations of kernels that are never called

    tl = _NoTritonLanguage()


def jit(fn):
    return triton.jit(fn) if HAS_TRITON else fn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype for inputs of `dtype`: float64 stays, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(*tensors: torch.Tensor):
    """The tensors in their compute dtype (float16/bfloat16 -> float32; differentiable)."""
    return tuple(t.to(compute_dtype(t.dtype)) for t in tensors)


LOG_2PI = 1.8378770664093453  # log(2 pi)


def block_size(n: int, lo: int = 16, hi: int = 128) -> int:
    """A power of two covering n, clamped to [lo, hi] (a tile extent for Triton)."""
    size = lo
    while size < n and size < hi:
        size *= 2
    return size


def acc_dtype(dtype: torch.dtype):
    """The Triton accumulator dtype for a compute dtype (float64 or float32)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
