"""fastvae/kernels/gaussian_log_prob.py: fused Gaussian log densities (interpreter on CPU) against float64
references."""
import math

import pytest
import torch

from fastvae.kernels import gaussian_log_prob as G

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (2e-2, 2e-2)}


def direct_log_prob(z, mu, logvar):
    """An independent float64 formula: sum of scalar-Gaussian log densities via torch.distributions."""
    dist = torch.distributions.Normal(mu.double().unsqueeze(1), torch.exp(0.5 * logvar.double()).unsqueeze(1))
    return dist.log_prob(z.double()).sum(-1)


def run(fn, z, mu, logvar, upstream):
    z = z.detach().requires_grad_()
    params = [] if mu is None else [mu.detach().requires_grad_(), logvar.detach().requires_grad_()]
    out = fn(z, *params) if params else fn(z, None, None)
    (out.double() * upstream).sum().backward()
    return [out, z.grad] + [p.grad for p in params]


def check(fast, ref, dtype):
    atol, rtol = TOL[dtype]
    for name, a, b in zip(("out", "dz", "dmu", "dlogvar"), fast, ref):
        if name != "out" and a.dtype != torch.float64:
            b = b.to(a.dtype)  # gradients come back in the input dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b.double(), atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def inputs(batch, samples, dims, dtype=torch.float32, extreme=False):
    mu = torch.randn(batch, dims, dtype=torch.float64)
    logvar = torch.randn(batch, dims, dtype=torch.float64)
    if extreme:
        pick = torch.rand(batch, dims)
        logvar[pick < 0.25] = -20.0
        logvar[pick > 0.75] = 20.0
        mu[torch.rand(batch, dims) < 0.3] = 1e3
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * torch.randn(batch, samples, dims, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


@pytest.mark.parametrize("shape", [(41, 3, 37), (1, 1, 32), (6, 50, 4)])
@pytest.mark.parametrize("extreme", [False, True])
def test_matches_float64_reference(shape, extreme):
    z, mu, logvar = inputs(*shape, extreme=extreme)
    upstream = torch.randn(shape[:2], dtype=torch.float64)
    fast = run(G.gaussian_log_prob_triton, z, mu, logvar, upstream)
    ref = run(G.gaussian_log_prob_reference, z.double(), mu.double(), logvar.double(), upstream)
    check(fast, ref, torch.float32)
    torch.testing.assert_close(ref[0], direct_log_prob(z, mu, logvar), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("shape", [(41, 3, 37), (2, 1, 5)])
def test_standard_normal(shape):
    z = torch.randn(shape) * 3
    upstream = torch.randn(shape[:2], dtype=torch.float64)
    fast = run(G.gaussian_log_prob_triton, z, None, None, upstream)
    ref = run(G.gaussian_log_prob_reference, z.double(), None, None, upstream)
    check(fast, ref, torch.float32)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z.double()).sum(-1)
    torch.testing.assert_close(ref[0], expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_non_contiguous(dtype):
    z, mu, logvar = inputs(9, 4, 6, dtype=dtype)
    z = z.transpose(0, 1).contiguous().transpose(0, 1)  # [B, K, D] with the K axis outermost in memory
    mu, logvar = mu.t().contiguous().t(), logvar.t().contiguous().t()
    assert not z.is_contiguous() and not mu.is_contiguous()
    upstream = torch.randn(9, 4, dtype=torch.float64)
    fast = run(G.gaussian_log_prob_triton, z, mu, logvar, upstream)
    ref = run(G.gaussian_log_prob_reference, z.double(), mu.double(), logvar.double(), upstream)
    assert fast[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert fast[1].dtype == dtype
    check(fast, ref, dtype)


def expanded_form(z, mu, logvar):
    """The GEMM-friendly expansion sum (z^2 - 2 z mu + mu^2) / var, in z's dtype (what to avoid)."""
    inv_var = torch.exp(-logvar).unsqueeze(1)
    quad = (z * z * inv_var).sum(-1) - 2 * (z * mu.unsqueeze(1) * inv_var).sum(-1) + (mu * mu).unsqueeze(1).mul(
        inv_var).sum(-1)
    return -0.5 * (z.shape[-1] * math.log(2 * math.pi) + logvar.sum(-1, keepdim=True) + quad)


def test_close_z_tiny_variance_no_cancellation():
    """z one std (e^-10 ~ 4.5e-5) from mu = 30 in fp32: (z - mu) is exact in the direct form, while
    the expanded form loses everything (its terms are ~1e12 for a result of order 1e2)."""
    batch, samples, dims = 8, 3, 16
    mu = torch.full((batch, dims), 30.0)
    logvar = torch.full((batch, dims), -20.0)
    z = (mu.double().unsqueeze(1) + math.exp(-10.0) * torch.randn(batch, samples, dims, dtype=torch.float64)).float()
    fast = G.gaussian_log_prob_triton(z, mu, logvar)
    ref = G.gaussian_log_prob_reference(z.double(), mu.double(), logvar.double())  # same fp32 values, in fp64
    torch.testing.assert_close(fast.double(), ref, atol=1e-4, rtol=1e-5)
    expanded_error = (expanded_form(z, mu, logvar).double() - ref).abs().max()
    assert expanded_error > 1e3 * (fast.double() - ref).abs().max().clamp_min(1e-6)  # the case is a real trap


def test_gradcheck_float64():
    z, mu, logvar = inputs(3, 2, 4, dtype=torch.float64)
    args = (z.requires_grad_(), mu.requires_grad_(), logvar.requires_grad_())
    assert torch.autograd.gradcheck(G.gaussian_log_prob_triton, args)
    assert torch.autograd.gradcheck(G.gaussian_log_prob_reference, args)
    assert torch.autograd.gradcheck(lambda x: G.gaussian_log_prob_triton(x, None, None), (args[0],))
