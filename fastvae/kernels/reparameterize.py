"""Reparameterisation z = mu + exp(logvar / 2) * eps: Triton kernels, launchers, the custom op
(`torch.ops.fastvae.reparameterize_triton`, fake and autograd registered), reference.

The noise eps [B, K, D] is drawn by the caller (torch.randn with the user's generator) in the
compute dtype and passed in, so every backend sees bitwise the same noise. Forward reads mu,
logvar and eps once and writes z; backward reduces the K samples per row inside the kernel:
    dmu = sum_k dz_k,    dlogvar = 0.5 * exp(logvar / 2) * sum_k dz_k * eps_k.
"""
from __future__ import annotations

import torch

from ._common import acc_dtype, block_size, jit, tl, triton
from .dtypes import upcast


def reparameterize_reference(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Plain torch: mu, logvar [B, D]; eps [B, K, D] -> z [B, K, D] in mu's dtype (computed in fp32+)."""
    mu_c, logvar_c = upcast(mu, logvar)
    z = mu_c.unsqueeze(1) + torch.exp(0.5 * logvar_c).unsqueeze(1) * eps.to(mu_c.dtype)
    return z.to(mu.dtype)


@jit
def _reparameterize_fwd_kernel(
    mu_ptr,  # [B, D] posterior means, strides (stride_mb, stride_md)
    logvar_ptr,  # [B, D] posterior log-variances, strides (stride_lb, stride_ld)
    eps_ptr,  # [B, K, D] standard-normal noise, contiguous, compute dtype
    z_ptr,  # [B, K, D] output samples, contiguous, input dtype
    B, K, D,
    stride_mb, stride_md, stride_lb, stride_ld,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened (b, k) sample rows
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < B * K
    mask = row_ok[:, None] & (cols < D)[None, :]
    b = rows // K
    mu = tl.load(mu_ptr + b[:, None] * stride_mb + cols[None, :] * stride_md, mask=mask, other=0.0)
    lv = tl.load(logvar_ptr + b[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
    offs = rows[:, None] * D + cols[None, :]
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0)
    mu = mu.to(eps.dtype)
    lv = lv.to(eps.dtype)
    z = mu + tl.exp(0.5 * lv) * eps
    tl.store(z_ptr + offs, z, mask=mask)


@jit
def _reparameterize_bwd_kernel(
    dz_ptr,  # [B, K, D] upstream gradient, contiguous
    eps_ptr,  # [B, K, D] the forward noise, contiguous, compute dtype
    logvar_ptr,  # [B, D] strides (stride_lb, stride_ld)
    dmu_ptr,  # [B, D] output, contiguous, mu's dtype
    dlogvar_ptr,  # [B, D] output, contiguous, logvar's dtype
    B, K, D,
    stride_lb, stride_ld,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < B)[:, None] & (cols < D)[None, :]
    lv = tl.load(logvar_ptr + rows[:, None] * stride_lb + cols[None, :] * stride_ld, mask=mask, other=0.0)
    lv = lv.to(ACC_DTYPE)
    grad_mu = tl.zeros([BLOCK_B, BLOCK_D], dtype=lv.dtype)
    grad_eps_dot = tl.zeros([BLOCK_B, BLOCK_D], dtype=lv.dtype)
    for k in range(0, K):
        offs = (rows[:, None] * K + k) * D + cols[None, :]
        dz = tl.load(dz_ptr + offs, mask=mask, other=0.0).to(lv.dtype)
        eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(lv.dtype)
        grad_mu += dz
        grad_eps_dot += dz * eps
    out = rows[:, None] * D + cols[None, :]
    tl.store(dmu_ptr + out, grad_mu, mask=mask)
    tl.store(dlogvar_ptr + out, 0.5 * tl.exp(0.5 * lv) * grad_eps_dot, mask=mask)


def reparameterize_fwd(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Host launcher: z [B, K, D] (contiguous, mu's dtype)."""
    B, K, D = eps.shape
    eps = eps.contiguous()
    z = torch.empty((B, K, D), dtype=mu.dtype, device=mu.device)
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_R = max(1, 2048 // BLOCK_D)
    grid = (triton.cdiv(B * K, BLOCK_R), triton.cdiv(D, BLOCK_D))
    _reparameterize_fwd_kernel[grid](mu, logvar, eps, z, B, K, D, mu.stride(0), mu.stride(1),
                                     logvar.stride(0), logvar.stride(1), BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return z


def reparameterize_bwd(dz: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
    """Host launcher: (dmu, dlogvar) [B, D] from dz [B, K, D]."""
    B, K, D = eps.shape
    dz = dz.contiguous()
    dmu = torch.empty((B, D), dtype=mu.dtype, device=mu.device)
    dlogvar = torch.empty((B, D), dtype=logvar.dtype, device=logvar.device)
    BLOCK_D = block_size(D, 16, 64)
    BLOCK_B = max(1, 1024 // BLOCK_D)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _reparameterize_bwd_kernel[grid](dz, eps, logvar, dmu, dlogvar, B, K, D, logvar.stride(0), logvar.stride(1),
                                     BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, ACC_DTYPE=acc_dtype(eps.dtype))
    return dmu, dlogvar


# ---------------------------------------------------------------- custom ops
@torch.library.custom_op("fastvae::reparameterize_triton", mutates_args=())
def _reparameterize_op(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return reparameterize_fwd(mu, logvar, eps)


@_reparameterize_op.register_fake
def _(mu, logvar, eps):
    return mu.new_empty(eps.shape)


@torch.library.custom_op("fastvae::reparameterize_triton_backward", mutates_args=())
def _reparameterize_backward_op(dz: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor,
                                logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return reparameterize_bwd(dz, eps, mu, logvar)


@_reparameterize_backward_op.register_fake
def _(dz, eps, mu, logvar):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dz):
    mu, logvar, eps = ctx.saved_tensors
    dmu, dlogvar = _reparameterize_backward_op(dz, eps, mu, logvar)
    return dmu, dlogvar, None


_reparameterize_op.register_autograd(_backward, setup_context=_setup)


def reparameterize_triton(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with the Triton kernels; eps is a constant (no gradient)."""
    return _reparameterize_op(mu, logvar, eps)
