"""Shared pieces of the latent-op kernel modules: the optional Triton import, tile sizes, accumulator dtypes.

Triton is optional (it is a dependency on Linux x86_64 only), while every kernel module also
holds the plain-torch reference of its op, which must import everywhere (the references' dtype
rule is `dtypes.py`, which never imports Triton). So the modules take
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


def block_size(n: int, lo: int = 16, hi: int = 128) -> int:
    """A power of two covering n, clamped to [lo, hi] (a tile extent for Triton)."""
    size = lo
    while size < n and size < hi:
        size *= 2
    return size


def acc_dtype(dtype: torch.dtype):
    """The Triton accumulator dtype for a compute dtype (float64 or float32)."""
    return tl.float64 if dtype == torch.float64 else tl.float32
