"""fastvae/kernels/reparameterize.py: Triton reparameterisation (interpreter on CPU) against a float64 reference."""
import pytest
import torch

from fastvae.kernels import reparameterize as R

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (2e-2, 2e-2)}


def inputs(batch, samples, dims, dtype=torch.float32, extreme=False, transposed=False):
    mu = torch.randn(batch, dims, dtype=torch.float64)
    logvar = torch.randn(batch, dims, dtype=torch.float64)
    if extreme:
        pick = torch.rand(batch, dims)
        logvar[pick < 0.25] = -20.0
        logvar[pick > 0.75] = 20.0
        mu[torch.rand(batch, dims) < 0.3] = 1e3
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    if transposed:
        mu, logvar = mu.t().contiguous().t(), logvar.t().contiguous().t()
    eps_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    eps = torch.randn(batch, samples, dims, dtype=eps_dtype)
    return mu, logvar, eps


def run(fn, mu, logvar, eps, upstream):
    mu = mu.detach().requires_grad_()
    logvar = logvar.detach().requires_grad_()
    z = fn(mu, logvar, eps)
    (z.double() * upstream).sum().backward()
    return z, mu.grad, logvar.grad


def check(fast, ref, dtype):
    atol, rtol = TOL[dtype]
    for name, a, b in zip(("z", "dmu", "dlogvar"), fast, ref):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b.double().to(a.dtype).double() if a.dtype != torch.float64 else b,
                                   atol=atol * scale, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("shape", [(41, 1, 37), (1, 3, 32), (17, 5, 8), (128, 2, 32)])
@pytest.mark.parametrize("extreme", [False, True])
def test_matches_float64_reference(shape, extreme):
    mu, logvar, eps = inputs(*shape, extreme=extreme)
    upstream = torch.randn(shape, dtype=torch.float64)  # an upstream gradient that is not 1
    fast = run(R.reparameterize_triton, mu, logvar, eps, upstream)
    ref = run(R.reparameterize_reference, mu.double(), logvar.double(), eps.double(), upstream)
    assert fast[0].dtype == torch.float32 and fast[0].shape == shape
    check(fast, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_non_contiguous(dtype):
    mu, logvar, eps = inputs(13, 3, 7, dtype=dtype, transposed=True)
    assert not mu.is_contiguous()
    upstream = torch.randn(13, 3, 7, dtype=torch.float64)
    fast = run(R.reparameterize_triton, mu, logvar, eps, upstream)
    ref = run(R.reparameterize_reference, mu.double(), logvar.double(), eps.double(), upstream)
    assert fast[0].dtype == dtype and fast[1].dtype == dtype
    check(fast, ref, dtype)


def test_gradcheck_float64():
    mu, logvar, eps = inputs(4, 3, 5, dtype=torch.float64)
    mu.requires_grad_()
    logvar.requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: R.reparameterize_triton(m, v, eps), (mu, logvar))
    assert torch.autograd.gradcheck(lambda m, v: R.reparameterize_reference(m, v, eps), (mu, logvar))


def test_nan_propagates():
    mu, logvar, eps = inputs(3, 2, 4)
    logvar[1, 2] = float("nan")
    z = R.reparameterize_triton(mu, logvar, eps)
    assert torch.isnan(z[1, :, 2]).all()
    assert not torch.isnan(z[0]).any()
