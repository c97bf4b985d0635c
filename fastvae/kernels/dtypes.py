"""The compute-dtype rule of every fastvae op, once (torch only; importing this does not import Triton).

float64 inputs compute in float64; float32, float16 and bfloat16 inputs compute in float32, so a half-precision
batch keeps its reductions (losses, log densities, log-sum-exps) in float32.
"""
from __future__ import annotations

import torch

LOG_2PI = 1.8378770664093453  # log(2 pi)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype for inputs of `dtype`: float64 stays, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(*tensors: torch.Tensor):
    """The tensors in their compute dtype (float16/bfloat16 -> float32; differentiable)."""
    return tuple(t.to(compute_dtype(t.dtype)) for t in tensors)
