"""Mutual information I_q(x; z) of a Gaussian posterior, streamed: Triton forward kernel, launcher,
and the chunked plain-torch reference (which also carries the gradient).

    I = mean_i [ -H(q(z|x_i)) - log q(z_i) ],   one sample z_i ~ q(z|x_i) per row,
    -H_i = -0.5 * D * log 2pi - 0.5 * sum_j (1 + logvar_ij),
    log q(z_i) = logsumexp_{n in A(i)} log N(z_i; mu_n, var_n) - log |A(i)|,

where the aggregate A(i) is either every row (whole-set estimator, Li et al.) or the rows of the
consecutive chunk of `segment` rows that holds i (per-batch estimator, He et al.; averaging the
per-row terms over all rows equals averaging the chunk values weighted by chunk size).

Memory is O(N * D): the N x N pairs are visited in tiles (BLOCK_M samples against BLOCK_N
posteriors), each tile folded into a running (max, sum) logsumexp, flash-attention style. The
squared distance is computed in the direct form sum_d (z_d - mu_d)^2 / var_d with ordinary fp32
(fp64 for float64 inputs) arithmetic, one dimension at a time: no tl.dot, hence no tf32. The
expanded GEMM form z.z/var - 2 z.mu/var + mu.mu/var would use tensor cores but cancels
catastrophically when z is close to mu and var is tiny (exactly the collapsed-posterior and
very-confident-posterior regimes MI is used to diagnose), so precision wins over tensor cores.
The Triton kernel is forward-only (the custom op `torch.ops.fastvae.mutual_information_triton` has a fake and
no autograd); with gradients required fastvae runs the torch reference.
"""
from __future__ import annotations

import math

import torch

from ._common import acc_dtype, jit, tl, triton
from .dtypes import LOG_2PI, compute_dtype, upcast

TILE_ELEMENTS = 1 << 21  # elements of one [rows, cols, D] tile in the torch reference (8 MiB in fp32)


def _tile_log_density(z, mu, logvar):
    """[m, n] log N(z_i; mu_n, var_n) for a tile (direct form; materialises only [m, n, D])."""
    diff = z.unsqueeze(1) - mu.unsqueeze(0)
    inv_var = torch.exp(-logvar).unsqueeze(0)
    const = -0.5 * (z.shape[-1] * LOG_2PI + logvar.sum(dim=-1))
    return const.unsqueeze(0) - 0.5 * (diff * diff * inv_var).sum(dim=-1)


def _aggregate_lse_differentiable(z, mu, logvar, tile_elements: int):
    """logsumexp_n log N(z_i; mu_n, var_n) over all n -> [m], streamed over [rows, cols, D] tiles
    (out-of-place ops, so autograd can differentiate it)."""
    n, dims = mu.shape
    rows = max(1, min(z.shape[0], tile_elements // max(1, dims * min(n, 1024))))
    cols = max(1, tile_elements // max(1, dims * rows))
    out = []
    for r0 in range(0, z.shape[0], rows):
        z_tile = z[r0:r0 + rows]
        running = None
        for c0 in range(0, n, cols):
            lse = torch.logsumexp(_tile_log_density(z_tile, mu[c0:c0 + cols], logvar[c0:c0 + cols]), dim=1)
            running = lse if running is None else torch.logaddexp(running, lse)
        out.append(running)
    return torch.cat(out)


def _new_tile(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((rows, cols), dtype=like.dtype, device=like.device)


def _aggregate_lse_inplace(z, mu, logvar, tile_elements: int):
    """The same without autograd, faster on a CPU: like the Triton kernel, a [rows, cols] tile of
    squared distances accumulated one dimension at a time in place (cache-resident), then folded
    into the running logsumexp."""
    n, dims = mu.shape
    z_t, mu_t = z.t().contiguous(), mu.t().contiguous()
    inv_var_t = torch.exp(-logvar).t().contiguous()
    const = -0.5 * (dims * LOG_2PI + logvar.sum(dim=1))
    area = max(1, tile_elements // 8)  # [rows, cols] cells; two buffers of them (default 2 x 1 MiB in fp32)
    rows = max(1, min(z.shape[0], 256))
    cols = max(1, min(n, area // rows))
    out = []
    for r0 in range(0, z.shape[0], rows):
        z_rows = z_t[:, r0:r0 + rows]
        running = None
        for c0 in range(0, n, cols):
            c1 = min(n, c0 + cols)
            dist = _new_tile(z_rows.shape[1], c1 - c0, z)
            diff = torch.empty_like(dist)
            for d in range(dims):
                torch.sub(z_rows[d].unsqueeze(1), mu_t[d, c0:c1].unsqueeze(0), out=diff)
                diff.square_()
                dist.addcmul_(diff, inv_var_t[d, c0:c1].unsqueeze(0))
            lse = torch.logsumexp(dist.mul_(-0.5).add_(const[c0:c1].unsqueeze(0)), dim=1)
            running = lse if running is None else torch.logaddexp(running, lse)
        out.append(running)
    return torch.cat(out)


def _aggregate_lse(z, mu, logvar, tile_elements: int):
    """logsumexp over all rows of (mu, logvar) for each z row -> [m], streamed; O(N * D + tile) memory."""
    if torch.is_grad_enabled() and (z.requires_grad or mu.requires_grad or logvar.requires_grad):
        return _aggregate_lse_differentiable(z, mu, logvar, tile_elements)
    return _aggregate_lse_inplace(z, mu, logvar, tile_elements)


def aggregate_log_density_reference(z, mu, logvar, segment: int, tile_elements: int = TILE_ELEMENTS):
    """Plain torch, streamed: [N] logsumexp over the aggregate of each row (chunks of `segment` rows)."""
    z, mu, logvar = upcast(z, mu, logvar)
    n, dims = mu.shape
    if segment >= n:
        return _aggregate_lse(z, mu, logvar, tile_elements)
    full = (n // segment) * segment
    pieces = []
    if full:
        chunks = full // segment
        # equal chunks side by side: [chunks, S, S, D] in groups that fit one tile
        group = max(1, tile_elements // (segment * segment * dims))
        for c0 in range(0, chunks, group):
            c1 = min(chunks, c0 + group)
            zc = z[c0 * segment:c1 * segment].reshape(c1 - c0, segment, dims)
            mc = mu[c0 * segment:c1 * segment].reshape(c1 - c0, segment, dims)
            lc = logvar[c0 * segment:c1 * segment].reshape(c1 - c0, segment, dims)
            if group == 1 and segment * segment * dims > tile_elements:
                pieces.append(_aggregate_lse(zc[0], mc[0], lc[0], tile_elements))
                continue
            diff = zc.unsqueeze(2) - mc.unsqueeze(1)  # [c, S(z), S(mu), D]
            const = -0.5 * (dims * LOG_2PI + lc.sum(dim=-1))  # [c, S]
            logp = const.unsqueeze(1) - 0.5 * (diff * diff * torch.exp(-lc).unsqueeze(1)).sum(dim=-1)
            pieces.append(torch.logsumexp(logp, dim=2).reshape(-1))
    if full < n:
        pieces.append(_aggregate_lse(z[full:], mu[full:], logvar[full:], tile_elements))
    return torch.cat(pieces)


def combine_mutual_information(lse, logvar, segment: int):
    """MI (scalar, compute dtype) from the per-row aggregate logsumexp [N] and logvar [N, D]."""
    (logvar_c,) = upcast(logvar)
    n, dims = logvar.shape
    neg_entropy = -0.5 * dims * LOG_2PI - 0.5 * (1.0 + logvar_c).sum(dim=1)
    if segment >= n:
        log_count = torch.full_like(lse, math.log(n))
    else:
        sizes = torch.full((n,), float(segment), dtype=lse.dtype, device=lse.device)
        tail = n % segment
        if tail:
            sizes[n - tail:] = float(tail)
        log_count = torch.log(sizes)
    return (neg_entropy - (lse - log_count)).mean()


def mutual_information_reference(z, mu, logvar, segment: int, tile_elements: int = TILE_ELEMENTS):
    """Plain torch MI estimate (differentiable), O(N * D + tile) memory."""
    lse = aggregate_log_density_reference(z, mu, logvar, segment, tile_elements)
    return combine_mutual_information(lse, logvar, segment)


@jit
def _mutual_information_fwd_kernel(
    z_t_ptr,  # [D, N] samples, transposed, contiguous, compute dtype
    mu_t_ptr,  # [D, N] posterior means, transposed, contiguous
    inv_var_t_ptr,  # [D, N] exp(-logvar), transposed, contiguous
    const_ptr,  # [N] -0.5 * (D log 2pi + sum_d logvar_nd)
    lse_ptr,  # [N] out: logsumexp over the row's aggregate of log N(z_i; mu_n, var_n)
    N, D, SEGMENT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    row_segment = rows // SEGMENT
    # columns this tile of rows can see: the union of their segments
    col_lo = (row0 // SEGMENT) * SEGMENT
    col_hi = tl.minimum(((tl.minimum(row0 + BLOCK_M, N) - 1) // SEGMENT + 1) * SEGMENT, N)
    run_max = tl.full([BLOCK_M], float("-inf"), dtype=ACC_DTYPE)
    run_sum = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    for c0 in range(col_lo, col_hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_mask = cols < col_hi
        dist = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
        for d in range(0, D):
            z = tl.load(z_t_ptr + d * N + rows, mask=row_mask, other=0.0)
            mu = tl.load(mu_t_ptr + d * N + cols, mask=col_mask, other=0.0)
            inv_var = tl.load(inv_var_t_ptr + d * N + cols, mask=col_mask, other=0.0)
            diff = z[:, None] - mu[None, :]
            dist += diff * diff * inv_var[None, :]
        const = tl.load(const_ptr + cols, mask=col_mask, other=0.0)
        log_p = const[None, :] - 0.5 * dist
        visible = col_mask[None, :] & ((cols // SEGMENT)[None, :] == row_segment[:, None])
        log_p = tl.where(visible, log_p, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(log_p, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that saw nothing yet
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(log_p - shift[:, None]), axis=1)
        run_max = new_max
    tl.store(lse_ptr + rows, run_max + tl.log(tl.where(row_mask, run_sum, 1.0)), mask=row_mask)


def aggregate_log_density_fwd(z, mu, logvar, segment: int, block_m: int = 64, block_n: int = 64):
    """Host launcher: [N] logsumexp over each row's aggregate (compute dtype), O(N * D) memory."""
    z, mu, logvar = upcast(z, mu, logvar)
    n, dims = mu.shape
    z_t = z.t().contiguous()
    mu_t = mu.t().contiguous()
    inv_var_t = torch.exp(-logvar).t().contiguous()
    const = -0.5 * (dims * LOG_2PI + logvar.sum(dim=1))
    lse = torch.empty(n, dtype=z.dtype, device=z.device)
    _mutual_information_fwd_kernel[(triton.cdiv(n, block_m),)](
        z_t, mu_t, inv_var_t, const.contiguous(), lse, n, dims, min(segment, n),
        BLOCK_M=block_m, BLOCK_N=block_n, ACC_DTYPE=acc_dtype(z.dtype))
    return lse


def mutual_information_fwd(z, mu, logvar, segment: int):
    """MI estimate with the Triton kernel (forward only: the result carries no gradient)."""
    block = 32 if segment <= 32 else 64
    lse = aggregate_log_density_fwd(z, mu, logvar, segment, block, block)
    return combine_mutual_information(lse, logvar, segment)


@torch.library.custom_op("fastvae::mutual_information_triton", mutates_args=())
def mutual_information_triton(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, segment: int) -> torch.Tensor:
    """MI estimate with the Triton kernel, as a custom op (forward only: no gradient)."""
    return mutual_information_fwd(z, mu, logvar, segment)


@mutual_information_triton.register_fake
def _(z, mu, logvar, segment):
    return mu.new_empty((), dtype=compute_dtype(mu.dtype))
