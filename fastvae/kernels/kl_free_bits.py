"""KL(N(mu, exp(logvar)) || N(0, I)) with the free-bits variants of the recipes: Triton kernels, launchers,
the custom ops that wrap them (`torch.ops.fastvae.free_bits_kl_triton`, with a fake and autograd, so a
`torch.compile`d model keeps them), and the plain-torch reference.

The modes and their loss are defined once in `free_bits.py`; the forward kernel produces the partial sums that
`free_bits_loss` combines (and the unmasked per-dimension batch mean of KL, which is what is logged), and the
backward kernel applies each mode's mask to d KL_ij.
"""
from __future__ import annotations

import functools

import torch

from ._common import acc_dtype, block_size, jit, tl, triton
from .dtypes import compute_dtype, upcast
from .free_bits import MODE_IDS, free_bits_loss, free_bits_partial_sums


# ---------------------------------------------------------------- reference
def kl_per_dim_reference(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL_ij [B, D] in the compute dtype (float32 for half inputs, float64 for float64)."""
    mu_c, logvar_c = upcast(mu, logvar)
    return 0.5 * (mu_c * mu_c + torch.exp(logvar_c) - logvar_c - 1.0)


def free_bits_kl_reference(mu: torch.Tensor, logvar: torch.Tensor, target: float, mode: str):
    """Plain torch: (loss scalar, unmasked batch-mean KL per dimension [D]), compute dtype."""
    kl = kl_per_dim_reference(mu, logvar)
    batch, dims = kl.shape
    loss, col_mean, _ = free_bits_loss(*free_bits_partial_sums(kl, target, mode), batch, dims, target, mode)
    return loss, col_mean.detach()


# ---------------------------------------------------------------- Triton helpers (shared with sample_and_kl)
@jit
def _kl_terms(mu, lv):
    """KL_ij and its derivative in logvar (the one in mu is mu itself)."""
    var = tl.exp(lv)
    kl = 0.5 * (mu * mu + var - lv - 1.0)
    return kl, 0.5 * (var - 1.0)


@jit
def _kl_grad_scale(kl, rows, cols, row_mask, col_mask, grad_scale, target, target_dim,
                   row_kl_ptr, col_mean_ptr, batch_mean_ptr, MODE: tl.constexpr):
    """d loss / d KL_ij for a tile (grad_scale = upstream gradient / B), per free-bits mode."""
    if MODE == 0:  # none
        scale = grad_scale + 0.0 * kl
    elif MODE == 1:  # sentence: mask of the row's KL
        row_kl = tl.load(row_kl_ptr + rows, mask=row_mask, other=0.0)
        keep = (row_kl <= target) == 0
        scale = tl.where(keep, grad_scale, 0.0)[:, None] + 0.0 * kl
    elif MODE == 2:  # dim: mask of each element
        scale = tl.where((kl <= target_dim) == 0, grad_scale, 0.0)
    elif MODE == 3:  # batch: one mask for all
        batch_mean = tl.load(batch_mean_ptr)
        keep = (batch_mean <= target) == 0
        scale = tl.where(keep, grad_scale, 0.0) + 0.0 * kl
    else:  # kingma: mask of the dimension's batch mean
        col_mean = tl.load(col_mean_ptr + cols, mask=col_mask, other=0.0)
        keep = (col_mean <= target_dim) == 0
        scale = tl.where(keep, grad_scale, 0.0)[None, :] + 0.0 * kl
    return scale


# ---------------------------------------------------------------- kernels
@jit
def _kl_free_bits_fwd_kernel(
    mu_ptr,  # [B, D] posterior means, strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] posterior log-variances, strides (stride_lb, stride_ld)
    row_kl_ptr,  # [B] out: sum_j KL_ij (unmasked), compute dtype
    row_loss_ptr,  # [B] out: sum_j m_ij KL_ij (dim mode only), compute dtype
    col_part_ptr,  # [cdiv(B, BLOCK_B), D] out: per-block column sums of KL_ij, compute dtype
    thresholds_ptr,  # [2] (target, target / D) in the compute dtype
    B, D,
    stride_mb, stride_md, stride_lb, stride_ld,
    MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    target_dim = tl.load(thresholds_ptr + 1)
    row_kl = tl.zeros([BLOCK_B], dtype=ACC_DTYPE)
    row_loss = tl.zeros([BLOCK_B], dtype=ACC_DTYPE)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_mask = cols < D
        mask = row_mask[:, None] & col_mask[None, :]
        mu = tl.load(mu_ptr + rows[:, None] * stride_mb + cols[None, :] * stride_md, mask=mask, other=0.0)
        lv = tl.load(logvar_ptr + rows[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
        kl, _ = _kl_terms(mu.to(ACC_DTYPE), lv.to(ACC_DTYPE))  # 0 where masked (mu = lv = 0)
        row_kl += tl.sum(kl, axis=1)
        if MODE == 2:
            row_loss += tl.sum(tl.where((kl <= target_dim) == 0, kl, 0.0), axis=1)
        tl.store(col_part_ptr + pid * D + cols, tl.sum(kl, axis=0), mask=col_mask)
    tl.store(row_kl_ptr + rows, row_kl, mask=row_mask)
    if MODE == 2:
        tl.store(row_loss_ptr + rows, row_loss, mask=row_mask)


@jit
def _kl_free_bits_bwd_kernel(
    mu_ptr,  # [B, D] strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] strides (stride_lb, stride_ld)
    grad_ptr,  # [] upstream gradient of the scalar loss
    row_kl_ptr,  # [B] forward row sums of KL (sentence mode)
    col_mean_ptr,  # [D] forward batch means of KL per dimension (kingma mode)
    batch_mean_ptr,  # [] forward batch mean of KL_i (batch mode)
    dmu_ptr,  # [B, D] out, contiguous, mu's dtype
    dlogvar_ptr,  # [B, D] out, contiguous, logvar's dtype
    thresholds_ptr,  # [2] (target, target / D) in the compute dtype
    B, D,
    stride_mb, stride_md, stride_lb, stride_ld,
    MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < B
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    mu = tl.load(mu_ptr + rows[:, None] * stride_mb + cols[None, :] * stride_md, mask=mask, other=0.0)
    lv = tl.load(logvar_ptr + rows[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
    mu = mu.to(ACC_DTYPE)
    lv = lv.to(ACC_DTYPE)
    kl, dkl_dlv = _kl_terms(mu, lv)
    grad_scale = tl.load(grad_ptr).to(ACC_DTYPE) / B
    scale = _kl_grad_scale(kl, rows, cols, row_mask, col_mask, grad_scale, tl.load(thresholds_ptr),
                           tl.load(thresholds_ptr + 1),
                           row_kl_ptr, col_mean_ptr, batch_mean_ptr, MODE)
    out = rows[:, None] * D + cols[None, :]
    tl.store(dmu_ptr + out, scale * mu, mask=mask)
    tl.store(dlogvar_ptr + out, scale * dkl_dlv, mask=mask)


# ---------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=64)
def thresholds(target: float, dims: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(target, target / D) as a tensor in the compute dtype, so the kernels compare against exactly
    the values the reference uses (a Python float kernel argument would be fp32). Cached: no
    host-to-device copy per call."""
    return torch.tensor([target, target / dims], dtype=dtype).to(device)


def kl_free_bits_fwd(mu: torch.Tensor, logvar: torch.Tensor, target: float, mode: str):
    """Host launcher: (loss [], col_mean [D], row_kl [B], batch_mean []) in the compute dtype."""
    B, D = mu.shape
    dtype = compute_dtype(mu.dtype)
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, min(64, 4096 // BLOCK_D))
    blocks = triton.cdiv(B, BLOCK_B)
    row_kl = torch.empty(B, dtype=dtype, device=mu.device)
    row_loss = torch.empty(B if mode == "dim" else 1, dtype=dtype, device=mu.device)
    col_part = torch.empty((blocks, D), dtype=dtype, device=mu.device)
    _kl_free_bits_fwd_kernel[(blocks,)](
        mu, logvar, row_kl, row_loss, col_part, thresholds(target, D, dtype, mu.device), B, D,
        mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
        MODE=MODE_IDS[mode], BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(dtype))
    loss, col_mean, batch_mean = free_bits_loss(row_kl, row_loss, col_part.sum(dim=0), B, D, target, mode)
    return loss, col_mean, row_kl, batch_mean


def kl_free_bits_bwd(grad, mu, logvar, row_kl, col_mean, batch_mean, target: float, mode: str):
    """Host launcher: (dmu, dlogvar) [B, D]; `grad` is the upstream gradient tensor (no host sync)."""
    B, D = mu.shape
    dmu = torch.empty((B, D), dtype=mu.dtype, device=mu.device)
    dlogvar = torch.empty((B, D), dtype=logvar.dtype, device=logvar.device)
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, 2048 // BLOCK_D)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _kl_free_bits_bwd_kernel[grid](
        mu, logvar, grad.reshape(()).contiguous(), row_kl, col_mean, batch_mean, dmu, dlogvar,
        thresholds(target, D, row_kl.dtype, mu.device), B, D,
        mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
        MODE=MODE_IDS[mode], BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(row_kl.dtype))
    return dmu, dlogvar


# ---------------------------------------------------------------- custom ops
@torch.library.custom_op("fastvae::free_bits_kl_triton", mutates_args=())
def _free_bits_kl_op(mu: torch.Tensor, logvar: torch.Tensor, target: float,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [], col_mean [D], row_kl [B], batch_mean []); the last two are saved for backward."""
    loss, col_mean, row_kl, batch_mean = kl_free_bits_fwd(mu, logvar, target, mode)
    if mode == "none":  # loss is batch_mean itself; a custom op's outputs may not alias each other
        batch_mean = batch_mean.clone()
    return loss, col_mean, row_kl, batch_mean


@_free_bits_kl_op.register_fake
def _(mu, logvar, target, mode):
    dtype = compute_dtype(mu.dtype)
    B, D = mu.shape
    return (mu.new_empty((), dtype=dtype), mu.new_empty(D, dtype=dtype), mu.new_empty(B, dtype=dtype),
            mu.new_empty((), dtype=dtype))


@torch.library.custom_op("fastvae::free_bits_kl_triton_backward", mutates_args=())
def _free_bits_kl_backward_op(grad: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, row_kl: torch.Tensor,
                              col_mean: torch.Tensor, batch_mean: torch.Tensor, target: float,
                              mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return kl_free_bits_bwd(grad, mu, logvar, row_kl, col_mean, batch_mean, target, mode)


@_free_bits_kl_backward_op.register_fake
def _(grad, mu, logvar, row_kl, col_mean, batch_mean, target, mode):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _setup(ctx, inputs, output):
    mu, logvar, target, mode = inputs
    _, col_mean, row_kl, batch_mean = output
    ctx.save_for_backward(mu, logvar, row_kl, col_mean, batch_mean)
    ctx.target, ctx.mode = target, mode
    ctx.mark_non_differentiable(col_mean, row_kl, batch_mean)


def _backward(ctx, grad_loss, _grad_col_mean, _grad_row_kl, _grad_batch_mean):
    mu, logvar, row_kl, col_mean, batch_mean = ctx.saved_tensors
    dmu, dlogvar = _free_bits_kl_backward_op(grad_loss, mu, logvar, row_kl, col_mean, batch_mean, ctx.target,
                                             ctx.mode)
    return dmu, dlogvar, None, None


_free_bits_kl_op.register_autograd(_backward, setup_context=_setup)


def free_bits_kl_triton(mu: torch.Tensor, logvar: torch.Tensor, target: float, mode: str):
    """(loss, kl_per_dim_mean) with the Triton kernels; the second output is a log (no gradient)."""
    loss, col_mean, _, _ = _free_bits_kl_op(mu, logvar, float(target), mode)
    return loss, col_mean
