"""fastvae/kernels/sample_and_kl.py: the fused sample + free-bits KL (interpreter on CPU) against float64 references."""
import pytest
import torch
from helpers import away_from_thresholds, separating_target

from fastvae.kernels import kl_free_bits as KL
from fastvae.kernels.free_bits import FREE_BITS_MODES
from fastvae.kernels import sample_and_kl as S

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3),
       torch.bfloat16: (2e-2, 2e-2)}


def inputs(batch, samples, dims, dtype=torch.float32, extreme=False, strided=False):
    width = 2 * dims if strided else dims
    mu = torch.randn(batch, width, dtype=torch.float64)
    logvar = torch.randn(batch, width, dtype=torch.float64)
    if extreme:
        pick = torch.rand(batch, width)
        logvar[pick < 0.2] = -20.0
        logvar[pick > 0.8] = 20.0
        mu[torch.rand(batch, width) < 0.2] = -1e3
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    if strided:
        mu, logvar = mu[:, 1::2], logvar[:, ::2]
    eps = torch.randn(batch, samples, dims, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    target = separating_target(KL.kl_per_dim_reference(mu.double(), logvar.double()).sum(1))
    return mu, logvar, eps, target


def run(fn, mu, logvar, eps, target, mode, upstream_z, upstream_loss=-1.5):
    mu = mu.detach().requires_grad_()
    logvar = logvar.detach().requires_grad_()
    z, loss, kl_mean = fn(mu, logvar, eps, target, mode)
    ((z.double() * upstream_z).sum() + upstream_loss * loss).backward()
    return z, loss, kl_mean, mu.grad, logvar.grad


def check(fast, ref, dtype):
    atol, rtol = TOL[dtype]
    for name, a, b in zip(("z", "loss", "kl_per_dim_mean", "dmu", "dlogvar"), fast, ref):
        if name == "z" and a.dtype != torch.float64:
            b = b.to(a.dtype)  # the reference rounded to the output dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b.double(), atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("mode", FREE_BITS_MODES)
@pytest.mark.parametrize("shape", [(41, 1, 37), (1, 2, 32), (9, 3, 5)])
def test_matches_float64_reference(mode, shape):
    mu, logvar, eps, target = inputs(*shape)
    upstream = torch.randn(shape, dtype=torch.float64)
    fast = run(S.sample_and_kl_triton, mu, logvar, eps, target, mode, upstream)
    ref = run(S.sample_and_kl_reference, mu.double(), logvar.double(), eps.double(), target, mode, upstream)
    check(fast, ref, torch.float32)


@pytest.mark.parametrize("mode", ["dim", "kingma", "sentence"])
def test_extreme_values_non_contiguous(mode):
    mu, logvar, eps, target = inputs(21, 2, 11, extreme=True, strided=True)
    assert not mu.is_contiguous()
    upstream = torch.randn(21, 2, 11, dtype=torch.float64)
    fast = run(S.sample_and_kl_triton, mu, logvar, eps, target, mode, upstream)
    ref = run(S.sample_and_kl_reference, mu.double(), logvar.double(), eps.double(), target, mode, upstream)
    check(fast, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    mu, logvar, eps, target = inputs(12, 2, 6, dtype=dtype)
    upstream = torch.randn(12, 2, 6, dtype=torch.float64)
    fast = run(S.sample_and_kl_triton, mu, logvar, eps, target, "dim", upstream)
    ref = run(S.sample_and_kl_reference, mu.double(), logvar.double(), eps.double(), target, "dim", upstream)
    assert fast[0].dtype == dtype and fast[3].dtype == dtype and fast[4].dtype == dtype
    check(fast, ref, dtype)


def test_gradient_from_only_one_output():
    """z unused (loss only) and loss unused (z only): backward handles a missing upstream gradient."""
    mu, logvar, eps, target = inputs(7, 2, 5)
    for use_z, use_loss in ((False, True), (True, False)):
        m, v = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        z, loss, _ = S.sample_and_kl_triton(m, v, eps, target, "dim")
        (z.sum() * use_z + loss * use_loss if use_z else loss).backward()
        m2, v2 = mu.double().requires_grad_(), logvar.double().requires_grad_()
        z2, loss2, _ = S.sample_and_kl_reference(m2, v2, eps.double(), target, "dim")
        (z2.sum() * use_z + loss2 * use_loss if use_z else loss2).backward()
        torch.testing.assert_close(m.grad.double(), m2.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v.grad.double(), v2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", FREE_BITS_MODES)
def test_gradcheck_float64(mode):
    target = 1.1
    for _ in range(100):  # redraw until every KL term lies away from the mask thresholds (finite differences)
        mu, logvar, eps, _ = inputs(4, 2, 3, dtype=torch.float64)
        if away_from_thresholds(KL.kl_per_dim_reference(mu, logvar), target):
            break
    else:
        pytest.fail("no draw of 100 kept the KL terms away from the free-bits thresholds")
    weights = torch.randn(4, 2, 3, dtype=torch.float64)
    mu.requires_grad_()
    logvar.requires_grad_()

    def fused(m, v):
        z, loss, _ = S.sample_and_kl_triton(m, v, eps, target, mode)
        return (z * weights).sum() + 3.0 * loss

    def reference(m, v):
        z, loss, _ = S.sample_and_kl_reference(m, v, eps, target, mode)
        return (z * weights).sum() + 3.0 * loss

    assert torch.autograd.gradcheck(fused, (mu, logvar))
    assert torch.autograd.gradcheck(reference, (mu, logvar))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 70), samples=st.integers(1, 3), dims=st.integers(1, 70),
       mode=st.sampled_from(FREE_BITS_MODES), seed=st.integers(0, 2**31 - 1))
def test_random_shapes(batch, samples, dims, mode, seed):
    torch.manual_seed(seed)
    mu, logvar, eps, target = inputs(batch, samples, dims)
    upstream = torch.randn(batch, samples, dims, dtype=torch.float64)
    fast = run(S.sample_and_kl_triton, mu, logvar, eps, target, mode, upstream)
    ref = run(S.sample_and_kl_reference, mu.double(), logvar.double(), eps.double(), target, mode, upstream)
    check(fast, ref, torch.float32)
