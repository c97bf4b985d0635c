"""The fused training-step op: z = mu + exp(logvar / 2) * eps and the free-bits KL in one pass.

Forward reads mu and logvar once, writes z [B, K, D] and the per-row / per-dimension KL partial
sums (the free-bits loss is combined from them by free_bits.py, which defines the modes). Backward is
one kernel that adds the reparameterisation gradient and the KL gradient:
    dmu     = sum_k dz_k + s_ij * mu_ij
    dlogvar = 0.5 * exp(logvar / 2) * sum_k dz_k * eps_k + s_ij * 0.5 * (exp(logvar_ij) - 1)
with s_ij = d loss / d KL_ij of the mode (upstream gradient / B times the mode's mask).
"""
from __future__ import annotations

import torch

from ._common import acc_dtype, block_size, jit, tl, triton
from .free_bits import MODE_IDS, free_bits_loss
from .kl_free_bits import _kl_grad_scale, _kl_terms, free_bits_kl_reference, thresholds
from .reparameterize import reparameterize_reference


def sample_and_kl_reference(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, target: float, mode: str):
    """Plain torch: (z [B, K, D] in mu's dtype, loss [], unmasked batch-mean KL per dimension [D])."""
    z = reparameterize_reference(mu, logvar, eps)
    loss, kl_mean = free_bits_kl_reference(mu, logvar, target, mode)
    return z, loss, kl_mean


@jit
def _sample_and_kl_fwd_kernel(
    mu_ptr,  # [B, D] posterior means, strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] posterior log-variances, strides (stride_lb, stride_ld)
    eps_ptr,  # [B, K, D] noise, contiguous, compute dtype
    z_ptr,  # [B, K, D] out samples, contiguous, mu's dtype
    row_kl_ptr,  # [B] out: sum_j KL_ij, compute dtype
    row_loss_ptr,  # [B] out: sum_j m_ij KL_ij (dim mode only)
    col_part_ptr,  # [cdiv(B, BLOCK_B), D] out: per-block column sums of KL_ij
    thresholds_ptr,  # [2] (target, target / D) in the compute dtype
    B, K, D,
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
        mu = mu.to(ACC_DTYPE)
        lv = lv.to(ACC_DTYPE)
        std = tl.exp(0.5 * lv)
        for k in range(0, K):
            offs = (rows[:, None] * K + k) * D + cols[None, :]
            eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
            tl.store(z_ptr + offs, mu + std * eps, mask=mask)
        kl, _ = _kl_terms(mu, lv)
        row_kl += tl.sum(kl, axis=1)
        if MODE == 2:
            row_loss += tl.sum(tl.where((kl <= target_dim) == 0, kl, 0.0), axis=1)
        tl.store(col_part_ptr + pid * D + cols, tl.sum(kl, axis=0), mask=col_mask)
    tl.store(row_kl_ptr + rows, row_kl, mask=row_mask)
    if MODE == 2:
        tl.store(row_loss_ptr + rows, row_loss, mask=row_mask)


@jit
def _sample_and_kl_bwd_kernel(
    dz_ptr,  # [B, K, D] upstream gradient of z, contiguous
    eps_ptr,  # [B, K, D] forward noise, contiguous
    mu_ptr,  # [B, D] strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] strides (stride_lb, stride_ld)
    grad_ptr,  # [] upstream gradient of the loss
    row_kl_ptr,  # [B] forward row sums of KL
    col_mean_ptr,  # [D] forward per-dimension batch means of KL
    batch_mean_ptr,  # [] forward batch mean of KL_i
    dmu_ptr,  # [B, D] out, contiguous
    dlogvar_ptr,  # [B, D] out, contiguous
    thresholds_ptr,  # [2] (target, target / D) in the compute dtype
    B, K, D,
    stride_mb, stride_md, stride_lb, stride_ld,
    HAS_DZ: tl.constexpr, MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
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
    grad_mu = scale * mu
    grad_lv = scale * dkl_dlv
    if HAS_DZ:
        sum_dz = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC_DTYPE)
        sum_dz_eps = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC_DTYPE)
        for k in range(0, K):
            offs = (rows[:, None] * K + k) * D + cols[None, :]
            dz = tl.load(dz_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
            eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
            sum_dz += dz
            sum_dz_eps += dz * eps
        grad_mu += sum_dz
        grad_lv += 0.5 * tl.exp(0.5 * lv) * sum_dz_eps
    out = rows[:, None] * D + cols[None, :]
    tl.store(dmu_ptr + out, grad_mu, mask=mask)
    tl.store(dlogvar_ptr + out, grad_lv, mask=mask)


def sample_and_kl_fwd(mu, logvar, eps, target: float, mode: str):
    """Host launcher: (z [B, K, D], loss [], col_mean [D], row_kl [B], batch_mean [])."""
    B, K, D = eps.shape
    eps = eps.contiguous()
    dtype = eps.dtype
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, min(64, 4096 // BLOCK_D))
    blocks = triton.cdiv(B, BLOCK_B)
    z = torch.empty((B, K, D), dtype=mu.dtype, device=mu.device)
    row_kl = torch.empty(B, dtype=dtype, device=mu.device)
    row_loss = torch.empty(B if mode == "dim" else 1, dtype=dtype, device=mu.device)
    col_part = torch.empty((blocks, D), dtype=dtype, device=mu.device)
    _sample_and_kl_fwd_kernel[(blocks,)](
        mu, logvar, eps, z, row_kl, row_loss, col_part, thresholds(target, D, dtype, mu.device), B, K, D,
        mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1),
        MODE=MODE_IDS[mode], BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(dtype))
    loss, col_mean, batch_mean = free_bits_loss(row_kl, row_loss, col_part.sum(dim=0), B, D, target, mode)
    return z, loss, col_mean, row_kl, batch_mean


def sample_and_kl_bwd(dz, grad_loss, eps, mu, logvar, row_kl, col_mean, batch_mean, target: float, mode: str):
    """Host launcher: (dmu, dlogvar) [B, D]; dz may be None (z unused), grad_loss a tensor."""
    B, K, D = eps.shape
    dmu = torch.empty((B, D), dtype=mu.dtype, device=mu.device)
    dlogvar = torch.empty((B, D), dtype=logvar.dtype, device=logvar.device)
    if grad_loss is None:
        grad_loss = torch.zeros((), dtype=eps.dtype, device=mu.device)
    has_dz = dz is not None
    dz = dz.contiguous() if has_dz else eps  # a placeholder pointer, never read
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, 2048 // BLOCK_D)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _sample_and_kl_bwd_kernel[grid](
        dz, eps, mu, logvar, grad_loss.reshape(()).contiguous(), row_kl, col_mean, batch_mean, dmu, dlogvar,
        thresholds(target, D, eps.dtype, mu.device), B, K, D, mu.stride(0), mu.stride(1), logvar.stride(0),
        logvar.stride(1),
        HAS_DZ=has_dz, MODE=MODE_IDS[mode], BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(eps.dtype))
    return dmu, dlogvar


# ---------------------------------------------------------------- custom ops
@torch.library.custom_op("fastvae::sample_and_kl_triton", mutates_args=())
def _sample_and_kl_op(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, target: float, mode: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z [B, K, D], loss [], col_mean [D], row_kl [B], batch_mean []); the last two are saved for backward."""
    z, loss, col_mean, row_kl, batch_mean = sample_and_kl_fwd(mu, logvar, eps, target, mode)
    if mode == "none":  # loss is batch_mean itself; a custom op's outputs may not alias each other
        batch_mean = batch_mean.clone()
    return z, loss, col_mean, row_kl, batch_mean


@_sample_and_kl_op.register_fake
def _(mu, logvar, eps, target, mode):
    B, K, D = eps.shape
    acc = eps.dtype
    return (mu.new_empty((B, K, D)), mu.new_empty((), dtype=acc), mu.new_empty(D, dtype=acc),
            mu.new_empty(B, dtype=acc), mu.new_empty((), dtype=acc))


@torch.library.custom_op("fastvae::sample_and_kl_triton_backward", mutates_args=())
def _sample_and_kl_backward_op(dz: torch.Tensor | None, grad_loss: torch.Tensor | None, eps: torch.Tensor,
                               mu: torch.Tensor, logvar: torch.Tensor, row_kl: torch.Tensor, col_mean: torch.Tensor,
                               batch_mean: torch.Tensor, target: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_and_kl_bwd(dz, grad_loss, eps, mu, logvar, row_kl, col_mean, batch_mean, target, mode)


@_sample_and_kl_backward_op.register_fake
def _(dz, grad_loss, eps, mu, logvar, row_kl, col_mean, batch_mean, target, mode):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _setup(ctx, inputs, output):
    mu, logvar, eps, target, mode = inputs
    _, _, col_mean, row_kl, batch_mean = output
    ctx.save_for_backward(mu, logvar, eps, row_kl, col_mean, batch_mean)
    ctx.target, ctx.mode = target, mode
    ctx.mark_non_differentiable(col_mean, row_kl, batch_mean)
    ctx.set_materialize_grads(False)  # an unused z or loss arrives as None: the kernel skips its term


def _backward(ctx, dz, grad_loss, _grad_col_mean, _grad_row_kl, _grad_batch_mean):
    mu, logvar, eps, row_kl, col_mean, batch_mean = ctx.saved_tensors
    dmu, dlogvar = _sample_and_kl_backward_op(dz, grad_loss, eps, mu, logvar, row_kl, col_mean, batch_mean,
                                              ctx.target, ctx.mode)
    return dmu, dlogvar, None, None, None


_sample_and_kl_op.register_autograd(_backward, setup_context=_setup)


def sample_and_kl_triton(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, target: float, mode: str):
    """(z [B, K, D], loss, kl_per_dim_mean) with the fused kernels; kl_per_dim_mean has no gradient."""
    z, loss, col_mean, _, _ = _sample_and_kl_op(mu, logvar, eps, float(target), mode)
    return z, loss, col_mean
