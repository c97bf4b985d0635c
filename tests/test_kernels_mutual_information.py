"""fastvae/kernels/mutual_information.py: streamed MI (Triton forward in the interpreter, chunked torch
reference) against a direct O(N^2 D) float64 computation."""
import math

import pytest
import torch

from fastvae.kernels import mutual_information as M


def direct_mi(z, mu, logvar, segment=None):
    """The textbook estimator, materialising every pair, in float64, one aggregate at a time."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    n = mu.shape[0]
    segment = n if segment is None else segment
    total = 0.0
    for start in range(0, n, segment):
        zc, mc, lc = z[start:start + segment], mu[start:start + segment], logvar[start:start + segment]
        pairs = torch.distributions.Normal(mc.unsqueeze(0), torch.exp(0.5 * lc).unsqueeze(0)).log_prob(
            zc.unsqueeze(1)).sum(-1)  # [rows z, rows mu]
        log_qz = torch.logsumexp(pairs, dim=1) - math.log(zc.shape[0])
        neg_entropy = -0.5 * mu.shape[1] * math.log(2 * math.pi) - 0.5 * (1 + lc).sum(-1)
        total += (neg_entropy - log_qz).sum().item()  # chunk mean weighted by its size
    return total / n


def posterior(n, dims, dtype=torch.float32, spread=1.0):
    mu = spread * torch.randn(n, dims, dtype=torch.float64)
    logvar = torch.randn(n, dims, dtype=torch.float64) - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, dims, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


@pytest.mark.parametrize("n,dims,segment", [(37, 5, None), (150, 3, None), (150, 3, 40), (61, 4, 7), (1, 6, None),
                                            (33, 2, 32)])
def test_kernel_and_reference_match_direct(n, dims, segment):
    z, mu, logvar = posterior(n, dims, dtype=torch.float64)
    expected = direct_mi(z, mu, logvar, segment)
    seg = n if segment is None else segment
    kernel = M.mutual_information_fwd(z, mu, logvar, seg).item()
    # a tiny tile budget forces many row and column tiles through the online logsumexp
    reference = M.mutual_information_reference(z, mu, logvar, seg, tile_elements=64).item()
    assert kernel == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert reference == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_kernel_small_blocks_span_segments():
    """Row tiles that straddle several per-batch chunks (BLOCK 16, chunks of 5 and a tail)."""
    z, mu, logvar = posterior(53, 3, dtype=torch.float64)
    lse = M.aggregate_log_density_fwd(z, mu, logvar, 5, block_m=16, block_n=16)
    expected = M.aggregate_log_density_reference(z, mu, logvar, 5)
    torch.testing.assert_close(lse, expected, atol=1e-10, rtol=1e-10)


def test_float32_kernel_against_float64():
    z, mu, logvar = posterior(90, 8)
    expected = direct_mi(z, mu, logvar)
    assert M.mutual_information_fwd(z, mu, logvar, 90).item() == pytest.approx(expected, abs=1e-4, rel=1e-4)
    half = [t.to(torch.bfloat16) for t in (z, mu, logvar)]
    expected_half = direct_mi(*half)
    assert M.mutual_information_fwd(*half, 90).dtype == torch.float32
    assert M.mutual_information_fwd(*half, 90).item() == pytest.approx(expected_half, abs=1e-3, rel=1e-3)


def test_close_z_tiny_variance():
    """mu ~ 30 with var e^-20 and z within a std of its own mu: the direct form keeps the density
    exact in fp32 (an expanded GEMM form would cancel: its terms are ~1e12)."""
    n, dims = 40, 6
    mu = (30.0 + 1e-3 * torch.randn(n, dims, dtype=torch.float64)).float()
    logvar = torch.full((n, dims), -20.0)
    z = (mu.double() + math.exp(-10.0) * torch.randn(n, dims, dtype=torch.float64)).float()
    expected = M.aggregate_log_density_reference(z.double(), mu.double(), logvar.double(), n)
    lse = M.aggregate_log_density_fwd(z, mu, logvar, n)
    torch.testing.assert_close(lse.double(), expected, atol=1e-3, rtol=1e-5)


def test_reference_streams_in_tiles(monkeypatch):
    """Neither torch path (differentiable, or in-place without autograd) builds more than one
    tile of the budget: no N x N (x D) tensor."""
    seen_3d, seen_2d = [], []
    tile_3d, tile_2d = M._tile_log_density, M._new_tile

    def recording_3d(z, mu, logvar):
        seen_3d.append(z.shape[0] * mu.shape[0] * mu.shape[1])
        return tile_3d(z, mu, logvar)

    def recording_2d(rows, cols, like):
        seen_2d.append(rows * cols)
        return tile_2d(rows, cols, like)

    monkeypatch.setattr(M, "_tile_log_density", recording_3d)
    monkeypatch.setattr(M, "_new_tile", recording_2d)
    z, mu, logvar = posterior(300, 4)
    budget = 4096
    with_grad = M.mutual_information_reference(z, mu.requires_grad_(), logvar, 300, tile_elements=budget)
    assert len(seen_3d) > 1 and max(seen_3d) <= budget and not seen_2d
    with torch.no_grad():
        without_grad = M.mutual_information_reference(z, mu, logvar, 300, tile_elements=budget)
    assert len(seen_2d) > 1 and max(seen_2d) <= budget // 8
    torch.testing.assert_close(with_grad.detach(), without_grad)


def test_reference_gradcheck_float64():
    z, mu, logvar = posterior(6, 3, dtype=torch.float64)
    args = (z.requires_grad_(), mu.requires_grad_(), logvar.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, c: M.mutual_information_reference(a, b, c, 6, tile_elements=16), args)
    assert torch.autograd.gradcheck(lambda a, b, c: M.mutual_information_reference(a, b, c, 4), args)
