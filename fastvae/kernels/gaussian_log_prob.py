"""Diagonal-Gaussian log densities summed over D, fused for [B, K, D] samples (importance-weighted
NLL): log N(z; mu, exp(logvar)) and log N(z; 0, I). Triton kernels, launchers, the custom op
(`torch.ops.fastvae.gaussian_log_prob_triton`, fake and autograd registered), reference.

    log N(z_bk; mu_b, var_b) = -0.5 * sum_j (log 2pi + logvar_bj + (z_bkj - mu_bj)^2 / var_bj)

Written in the direct (z - mu)^2 * exp(-logvar) form (no expansion into z^2 - 2 z mu + mu^2,
which cancels when z is close to mu and the variance is tiny). Backward, with g = d out [B, K]:
    dz_bkj = -g_bk * (z - mu) / var,   dmu_bj = sum_k g_bk (z - mu) / var,
    dlogvar_bj = -0.5 * sum_k g_bk * (1 - (z - mu)^2 / var).
"""
from __future__ import annotations

import torch

from ._common import acc_dtype, block_size, jit, tl, triton
from .dtypes import LOG_2PI, compute_dtype, upcast


def gaussian_log_prob_reference(z: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None):
    """Plain torch: z [B, K, D]; mu, logvar [B, D] (None, None: standard normal) -> [B, K], compute dtype."""
    (z_c,) = upcast(z)
    dims = z.shape[-1]
    if mu is None:
        return -0.5 * (dims * LOG_2PI + torch.linalg.vecdot(z_c, z_c))
    mu_c, logvar_c = upcast(mu, logvar)
    inv_std = torch.exp(-0.5 * logvar_c).unsqueeze(1)
    # direct form, scaled first: ((z - mu) / std)^2 summed over D
    scaled = z_c - mu_c.unsqueeze(1)
    if torch.is_grad_enabled() and (z.requires_grad or mu.requires_grad or logvar.requires_grad):
        scaled = scaled * inv_std
    else:  # evaluation (IW-NLL): one [B, K, D] temporary, updated in place (fresh buffers cost page faults)
        scaled.mul_(inv_std)
    return -0.5 * (dims * LOG_2PI + logvar_c.sum(dim=-1, keepdim=True) + torch.linalg.vecdot(scaled, scaled))


@jit
def _gaussian_log_prob_fwd_kernel(
    z_ptr,  # [B, K, D] samples, strides (stride_zb, stride_zk, stride_zd)
    mu_ptr,  # [B, D] means, strides (stride_mb, stride_md) (unused when not HAS_PARAMS)
    logvar_ptr,  # [B, D] log-variances, strides (stride_lb, stride_ld)
    out_ptr,  # [B, K] out, contiguous, compute dtype
    norm_ptr,  # [] -0.5 * D * log(2 pi) in the compute dtype (a float argument would be fp32)
    B, K, D,
    stride_zb, stride_zk, stride_zd, stride_mb, stride_md, stride_lb, stride_ld,
    HAS_PARAMS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened (b, k)
    row_mask = rows < B * K
    b = rows // K
    k = rows % K
    acc = tl.zeros([BLOCK_R], dtype=ACC_DTYPE)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < D)[None, :]
        z = tl.load(z_ptr + b[:, None] * stride_zb + k[:, None] * stride_zk + cols[None, :] * stride_zd,
                    mask=mask, other=0.0).to(ACC_DTYPE)
        if HAS_PARAMS:
            mu = tl.load(mu_ptr + b[:, None] * stride_mb + cols[None, :] * stride_md, mask=mask, other=0.0)
            lv = tl.load(logvar_ptr + b[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
            lv = lv.to(ACC_DTYPE)
            diff = z - mu.to(ACC_DTYPE)
            acc += tl.sum(lv + diff * diff * tl.exp(-lv), axis=1)
        else:
            acc += tl.sum(z * z, axis=1)
    tl.store(out_ptr + rows, tl.load(norm_ptr) - 0.5 * acc, mask=row_mask)


@jit
def _gaussian_log_prob_bwd_kernel(
    grad_ptr,  # [B, K] upstream gradient, contiguous
    z_ptr,  # [B, K, D] strides (stride_zb, stride_zk, stride_zd)
    mu_ptr,  # [B, D] strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] strides (stride_lb, stride_ld)
    dz_ptr,  # [B, K, D] out, contiguous, z's dtype
    dmu_ptr,  # [B, D] out, contiguous
    dlogvar_ptr,  # [B, D] out, contiguous
    B, K, D,
    stride_zb, stride_zk, stride_zd, stride_mb, stride_md, stride_lb, stride_ld,
    HAS_PARAMS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < B
    mask = row_mask[:, None] & (cols < D)[None, :]
    if HAS_PARAMS:
        mu = tl.load(mu_ptr + rows[:, None] * stride_mb + cols[None, :] * stride_md, mask=mask, other=0.0)
        lv = tl.load(logvar_ptr + rows[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
        mu = mu.to(ACC_DTYPE)
        inv_var = tl.exp(-lv.to(ACC_DTYPE))
        grad_mu = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC_DTYPE)
        grad_lv = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC_DTYPE)
    for k in range(0, K):
        g = tl.load(grad_ptr + rows * K + k, mask=row_mask, other=0.0).to(ACC_DTYPE)[:, None]
        z = tl.load(z_ptr + rows[:, None] * stride_zb + k * stride_zk + cols[None, :] * stride_zd,
                    mask=mask, other=0.0).to(ACC_DTYPE)
        if HAS_PARAMS:
            scaled = (z - mu) * inv_var
            grad_mu += g * scaled
            grad_lv += g * (scaled * (z - mu) - 1.0)
            dz = -g * scaled
        else:
            dz = -g * z
        tl.store(dz_ptr + (rows[:, None] * K + k) * D + cols[None, :], dz, mask=mask)
    if HAS_PARAMS:
        out = rows[:, None] * D + cols[None, :]
        tl.store(dmu_ptr + out, grad_mu, mask=mask)
        tl.store(dlogvar_ptr + out, 0.5 * grad_lv, mask=mask)


def _param_strides(mu, logvar):
    if mu is None:
        return 0, 0, 0, 0
    return mu.stride(0), mu.stride(1), logvar.stride(0), logvar.stride(1)


def gaussian_log_prob_fwd(z, mu, logvar):
    """Host launcher: [B, K] log densities (compute dtype); mu = logvar = None for N(0, I)."""
    B, K, D = z.shape
    dtype = compute_dtype(z.dtype)
    out = torch.empty((B, K), dtype=dtype, device=z.device)
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_R = max(1, min(128, 4096 // BLOCK_D))
    has_params = mu is not None
    _gaussian_log_prob_fwd_kernel[(triton.cdiv(B * K, BLOCK_R),)](
        z, mu if has_params else z, logvar if has_params else z, out,
        torch.full((), -0.5 * D * LOG_2PI, dtype=dtype, device=z.device), B, K, D,
        z.stride(0), z.stride(1), z.stride(2), *_param_strides(mu, logvar),
        HAS_PARAMS=has_params, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(dtype))
    return out


def gaussian_log_prob_bwd(grad, z, mu, logvar):
    """Host launcher: (dz [B, K, D], dmu [B, D] or None, dlogvar [B, D] or None)."""
    B, K, D = z.shape
    grad = grad.contiguous()
    has_params = mu is not None
    dz = torch.empty((B, K, D), dtype=z.dtype, device=z.device)
    dmu = torch.empty((B, D), dtype=mu.dtype, device=z.device) if has_params else None
    dlogvar = torch.empty((B, D), dtype=logvar.dtype, device=z.device) if has_params else None
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, 2048 // BLOCK_D)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _gaussian_log_prob_bwd_kernel[grid](
        grad, z, mu if has_params else z, logvar if has_params else z, dz,
        dmu if has_params else dz, dlogvar if has_params else dz, B, K, D,
        z.stride(0), z.stride(1), z.stride(2), *_param_strides(mu, logvar),
        HAS_PARAMS=has_params, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(grad.dtype))
    return dz, dmu, dlogvar


# ---------------------------------------------------------------- custom ops
@torch.library.custom_op("fastvae::gaussian_log_prob_triton", mutates_args=())
def _gaussian_log_prob_op(z: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None) -> torch.Tensor:
    return gaussian_log_prob_fwd(z, mu, logvar)


@_gaussian_log_prob_op.register_fake
def _(z, mu, logvar):
    return z.new_empty(z.shape[:2], dtype=compute_dtype(z.dtype))


@torch.library.custom_op("fastvae::gaussian_log_prob_triton_backward", mutates_args=())
def _gaussian_log_prob_backward_op(grad: torch.Tensor, z: torch.Tensor, mu: torch.Tensor | None,
                                   logvar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz, dmu, dlogvar); without mu/logvar (N(0, I)) the last two are empty (a custom op returns tensors)."""
    dz, dmu, dlogvar = gaussian_log_prob_bwd(grad, z, mu, logvar)
    if mu is None:
        dmu, dlogvar = z.new_empty(0), z.new_empty(0)
    return dz, dmu, dlogvar


@_gaussian_log_prob_backward_op.register_fake
def _(grad, z, mu, logvar):
    if mu is None:
        return z.new_empty(z.shape), z.new_empty(0), z.new_empty(0)
    return z.new_empty(z.shape), mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    z, mu, logvar = ctx.saved_tensors
    dz, dmu, dlogvar = _gaussian_log_prob_backward_op(grad, z, mu, logvar)
    if mu is None:
        return dz, None, None
    return dz, dmu, dlogvar


_gaussian_log_prob_op.register_autograd(_backward, setup_context=_setup)


def gaussian_log_prob_triton(z: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over D, [B, K], with the Triton kernels (mu = logvar = None: N(0, I))."""
    return _gaussian_log_prob_op(z, mu, logvar)
