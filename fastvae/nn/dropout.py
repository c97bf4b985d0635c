"""Dropout with its mask drawn as uniform floats compared with p: on the CPU 3.6x faster than the per-element
`bernoulli_` that `F.dropout` uses (a ptb decoder's [32, 11, 256] mask: 0.31 ms against 1.10 ms, one AMD EPYC
thread; two masks per step). The distribution is F.dropout's: each element kept with probability 1 - p and
scaled by 1 / (1 - p), the uniforms from torch's generator (so a run's seed reproduces them, and a resumed run
continues them). On other devices `F.dropout` itself runs (one fused kernel on a GPU). `F.dropout` is the
reference; tests/test_dropout.py compares the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), its mask from torch.rand on CPU tensors."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, True)
    # float32 uniforms whatever x's dtype: a bfloat16 uniform would move p by up to 1/256
    keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """nn.Dropout (same parameters, state and repr) through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
