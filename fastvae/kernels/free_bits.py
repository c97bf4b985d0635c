"""The free-bits modes and their loss, defined once (torch only; importing this does not import Triton).

With KL_ij = 0.5 * (mu_ij^2 + exp(logvar_ij) - logvar_ij - 1) for row i of B and dimension j of D, and
lam = target (nats per sentence), the scalar loss (a batch mean) of each mode is

  none      mean_i sum_j KL_ij                                      grad: that of the value
  sentence  mean_i m_i * KL_i,  KL_i = sum_j KL_ij, m_i = [KL_i > lam]        grad: m_i * dKL_i
  dim       mean_i sum_j m_ij * KL_ij,  m_ij = [KL_ij > lam / D]              grad: m_ij * dKL_ij
            (Li et al. fb=2: the gradient equals that of max(lam / D, KL_ij); the value does not)
  batch     m * mean_i KL_i,  m = [mean_i KL_i > lam]                           grad: m * dKL
  kingma    sum_j max(lam / D, mean_i KL_ij)   (Kingma et al. 2016)   grad: [mean_i KL_ij > lam / D]

Masks are constants for autograd. They are written "not (KL <= threshold)", which equals "KL > threshold" for
numbers and keeps a NaN KL in the loss: NaN inputs give a NaN loss, never a silently masked 0. The KL that is
logged is always the unmasked one.

The loss is computed from partial sums of KL_ij (row sums, column sums, and for `dim` the masked row sums): the
Triton kernels produce those sums in one pass, and the torch reference forms them from the full [B, D] matrix
and hands them to the same `free_bits_loss`, so the modes' arithmetic exists once.
"""
from __future__ import annotations

import torch

FREE_BITS_MODES = ("none", "sentence", "dim", "batch", "kingma")
MODE_IDS = {name: index for index, name in enumerate(FREE_BITS_MODES)}  # the kernels' MODE constexpr


def free_bits_partial_sums(kl: torch.Tensor, target: float, mode: str):
    """(row_kl [B], row_loss [B] (dim mode; else None), col_sum [D]) of KL_ij [B, D]; differentiable."""
    row_loss = None
    if mode == "dim":
        keep = ~(kl.detach() <= target / kl.shape[1])
        row_loss = torch.where(keep, kl, torch.zeros_like(kl)).sum(dim=1)
    return kl.sum(dim=1), row_loss, kl.sum(dim=0)


def free_bits_loss(row_kl, row_loss, col_sum, batch: int, dims: int, target: float, mode: str):
    """The scalar loss of `mode` from the partial sums; returns (loss, col_mean [D], batch_mean [])."""
    col_mean = col_sum / batch
    batch_mean = row_kl.sum() / batch
    if mode == "none":
        loss = batch_mean
    elif mode == "sentence":
        keep = ~(row_kl.detach() <= target)
        loss = torch.where(keep, row_kl, torch.zeros_like(row_kl)).sum() / batch
    elif mode == "dim":
        loss = row_loss.sum() / batch
    elif mode == "batch":
        keep = ~(batch_mean.detach() <= target)
        loss = torch.where(keep, batch_mean, torch.zeros_like(batch_mean))
    elif mode == "kingma":
        floor = torch.full_like(col_mean, target / dims)
        loss = torch.where(col_mean.detach() <= target / dims, floor, col_mean).sum()
    else:
        raise ValueError(f"unknown free-bits mode {mode!r}; expected one of {', '.join(FREE_BITS_MODES)}")
    return loss, col_mean, batch_mean
