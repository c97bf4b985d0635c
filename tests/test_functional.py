"""fastvae.functional: the public latent API on both backends (torch reference, Triton interpreter),
the recipes.md semantics written out independently, and clear errors for bad input."""
import math

import numpy as np
import pytest
import torch

import fastvae.functional as F

BACKENDS = ["torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend_name(request, monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", request.param)
    return request.param


def posterior(batch=11, dims=6, dtype=torch.float64, grad=True):
    mu = torch.randn(batch, dims, dtype=dtype)
    logvar = torch.randn(batch, dims, dtype=dtype)
    return mu.requires_grad_(grad), logvar.requires_grad_(grad)


def explicit_kl(mu, logvar):
    """KL per element from torch.distributions (independent of the library formula)."""
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    return torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))


def recipe_loss(mu, logvar, lam, mode):
    """recipes.md written out with Python loops and explicit masks, float64."""
    kl = explicit_kl(mu, logvar)
    batch, dims = kl.shape
    if mode == "none":
        return sum(kl[i].sum() for i in range(batch)) / batch
    if mode == "sentence":
        return sum(kl[i].sum() * float(kl[i].sum().item() > lam) for i in range(batch)) / batch
    if mode == "dim":
        return sum((kl[i] * (kl[i].detach() > lam / dims).double()).sum() for i in range(batch)) / batch
    if mode == "batch":
        mean = sum(kl[i].sum() for i in range(batch)) / batch
        return mean * float(mean.item() > lam)
    if mode == "kingma":
        return sum(torch.clamp(kl[:, j].mean(), min=lam / dims) for j in range(dims))
    raise AssertionError(mode)


def middle_target(mu, logvar):
    rows = explicit_kl(mu.detach(), logvar.detach()).sum(1).sort().values
    return 0.5 * float(rows[len(rows) // 2 - 1] + rows[len(rows) // 2])


@pytest.mark.parametrize("mode", F.FREE_BITS_MODES)
def test_free_bits_value_and_gradient_follow_recipes(mode, backend_name):
    mu, logvar = posterior()
    lam = middle_target(mu, logvar) if mode != "none" else 0.0  # mode none takes no target (it would be ignored)
    loss = F.free_bits_kl(mu, logvar, lam, mode)
    grads = torch.autograd.grad(3.0 * loss, (mu, logvar))
    expected = recipe_loss(mu, logvar, lam, mode)
    expected_grads = torch.autograd.grad(3.0 * expected, (mu, logvar))
    torch.testing.assert_close(loss, expected.to(loss.dtype), atol=1e-10, rtol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_dim_mode_gradient_is_that_of_the_max_form_value_is_not(backend_name):
    mu, logvar = posterior(9, 8)
    lam = 4.0
    loss = F.free_bits_kl(mu, logvar, lam, "dim")
    kl = explicit_kl(mu, logvar)
    max_form = torch.where(kl > lam / 8, kl, torch.full_like(kl, lam / 8)).sum() / 9  # max(lam/D, KL_ij)
    torch.testing.assert_close(torch.autograd.grad(loss, mu)[0], torch.autograd.grad(max_form, mu)[0])
    assert (kl <= lam / 8).any()  # some elements are masked, so the two values differ
    assert max_form.item() > loss.item()


def test_kingma_is_distinct_from_dim():
    mu, logvar = posterior(16, 4)
    lam = 3.0
    assert F.free_bits_kl(mu, logvar, lam, "kingma").item() != pytest.approx(
        F.free_bits_kl(mu, logvar, lam, "dim").item())


def test_kl_per_dim_matches_distributions(backend_name):
    mu, logvar = posterior(5, 7)
    torch.testing.assert_close(F.kl_per_dim(mu, logvar), explicit_kl(mu, logvar))
    assert F.kl_per_dim(mu.half(), logvar.half()).dtype == torch.float16


@pytest.mark.triton
def test_reparameterize_reproducible_and_identical_across_backends(monkeypatch):
    mu, logvar = posterior(7, 5, dtype=torch.float32)
    draws = {}
    for name in BACKENDS:
        monkeypatch.setenv("FASTVAE_BACKEND", name)
        first = F.reparameterize(mu, logvar, 3, generator=torch.Generator().manual_seed(11))
        again = F.reparameterize(mu, logvar, 3, generator=torch.Generator().manual_seed(11))
        assert torch.equal(first, again)
        draws[name] = first
    torch.testing.assert_close(draws["torch"], draws["triton"], atol=1e-6, rtol=1e-6)
    assert F.reparameterize(mu, logvar).shape == (7, 5)
    assert draws["torch"].shape == (7, 3, 5)


def test_reparameterize_statistics():
    mu = torch.tensor([[2.0, -1.0]])
    logvar = torch.tensor([[math.log(4.0), math.log(0.25)]])
    z = F.reparameterize(mu, logvar, 20000, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([2.0, 0.5]), atol=0.05, rtol=0)


@pytest.mark.parametrize("mode", ["dim", "kingma"])
def test_sample_and_kl_equals_the_two_steps(mode, backend_name):
    mu, logvar = posterior(13, 6)
    lam = middle_target(mu, logvar)
    z, loss, kl_mean = F.sample_and_kl(mu, logvar, 2, lam, mode, generator=torch.Generator().manual_seed(5))
    z2 = F.reparameterize(mu, logvar, 2, generator=torch.Generator().manual_seed(5))
    loss2 = F.free_bits_kl(mu, logvar, lam, mode)
    torch.testing.assert_close(z, z2)
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(kl_mean, explicit_kl(mu, logvar).mean(0).detach())  # logged KL: unmasked
    assert not kl_mean.requires_grad
    weights = torch.randn_like(z)
    g1 = torch.autograd.grad((z * weights).sum() + loss, (mu, logvar))
    g2 = torch.autograd.grad((z2 * weights).sum() + loss2, (mu, logvar))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_log_probs(backend_name):
    mu, logvar = posterior(4, 3)
    z = torch.randn(4, 6, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(mu.unsqueeze(1), torch.exp(0.5 * logvar).unsqueeze(1)).log_prob(z).sum(-1)
    torch.testing.assert_close(F.gaussian_log_prob(z, mu, logvar), expected)
    torch.testing.assert_close(F.gaussian_log_prob(z[:, 0], mu, logvar), expected[:, 0])
    torch.testing.assert_close(F.standard_normal_log_prob(z),
                               torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert F.standard_normal_log_prob(z[:, 0]).shape == (4,)


def test_low_precision_reductions_come_back_in_float32(backend_name):
    mu, logvar = posterior(8, 4, dtype=torch.float16, grad=False)
    mu[0, 0] = 300.0  # KL ~ 45000 for one element: a float16 sum of all would overflow soon after
    assert F.free_bits_kl(mu, logvar, 0.0, "none").dtype == torch.float32
    z, loss, kl_mean = F.sample_and_kl(mu, logvar)
    assert z.dtype == torch.float16 and loss.dtype == torch.float32 and kl_mean.dtype == torch.float32
    assert F.gaussian_log_prob(z, mu, logvar).dtype == torch.float32
    assert F.mutual_information(mu, logvar).dtype == torch.float32


def test_a_target_with_mode_none_is_refused_not_ignored():
    mu, logvar = posterior(4, 3, grad=False)
    for call in (lambda: F.free_bits_kl(mu, logvar, 5.0, "none"), lambda: F.sample_and_kl(mu, logvar, 1, 5.0)):
        with pytest.raises(ValueError, match="would be ignored"):
            call()
    assert F.free_bits_kl(mu, logvar, 0.0, "none") == F.free_bits_kl(mu, logvar)


def test_nan_propagates_never_silent_zero(backend_name):
    mu, logvar = posterior(5, 4, grad=False)
    logvar[1, 1] = float("nan")
    for mode in F.FREE_BITS_MODES:
        target = 100.0 if mode != "none" else 0.0  # a huge target masks everything else
        assert torch.isnan(F.free_bits_kl(mu, logvar, target, mode)), mode
        assert torch.isnan(F.sample_and_kl(mu, logvar, 1, target, mode)[1]), mode
    assert torch.isnan(F.reparameterize(mu, logvar)[1, 1])
    assert torch.isnan(F.gaussian_log_prob(mu, mu, logvar)[1])
    assert torch.isnan(F.mutual_information(mu, logvar, mu))


# ---------------------------------------------------------------- mutual information
def direct_mi(z, mu, logvar):
    pairs = torch.distributions.Normal(mu.unsqueeze(0), torch.exp(0.5 * logvar).unsqueeze(0)).log_prob(
        z.unsqueeze(1)).sum(-1)
    log_qz = torch.logsumexp(pairs, dim=1) - math.log(mu.shape[0])
    neg_entropy = -0.5 * mu.shape[1] * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)
    return (neg_entropy - log_qz).mean()


def test_mutual_information_whole_set_and_per_batch(backend_name):
    mu, logvar = posterior(45, 4, grad=False)
    z = F.reparameterize(mu, logvar)
    whole = F.mutual_information(mu, logvar, z)
    torch.testing.assert_close(whole, direct_mi(z, mu, logvar))
    per_batch = F.mutual_information(mu, logvar, z, batch_size=10)
    chunks = [(direct_mi(z[s:s + 10], mu[s:s + 10], logvar[s:s + 10]), min(10, 45 - s)) for s in range(0, 45, 10)]
    torch.testing.assert_close(per_batch, sum(v * n for v, n in chunks) / 45)
    assert F.mutual_information(mu, logvar, z, batch_size=1000).item() == pytest.approx(whole.item())


def own_posterior_term(z, mu, logvar):
    """mean_i [-H(q(z|x_i)) - log q(z_i|x_i)]: a zero-mean Monte Carlo term (std sqrt(D / 2N))."""
    neg_entropy = -0.5 * mu.shape[1] * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(-1)
    return (neg_entropy - F.gaussian_log_prob(z, mu, logvar)).mean().item()


def test_mutual_information_limits(backend_name):
    # identical posteriors: q(z) = q(z|x), the estimate is the zero-mean term alone (I = 0)
    n, dims = 512, 2
    mu = torch.randn(1, dims).expand(n, dims).contiguous()
    logvar = torch.randn(1, dims).expand(n, dims).contiguous()
    z = F.reparameterize(mu, logvar)
    estimate = F.mutual_information(mu, logvar, z).item()
    assert estimate == pytest.approx(own_posterior_term(z, mu, logvar), abs=1e-4)
    assert abs(estimate) < 0.25  # > 5 standard deviations
    # well-separated posteriors: q(z_i) = q(z_i|x_i) / N, the estimate is log N + that term (the cap)
    n, dims = 64, 3
    apart = torch.zeros(n, dims)
    apart[:, 0] = 100.0 * torch.arange(n)
    tight = torch.full((n, dims), -6.0)
    z = F.reparameterize(apart, tight)
    own = own_posterior_term(z, apart, tight)
    assert F.mutual_information(apart, tight, z).item() == pytest.approx(math.log(n) + own, abs=1e-4)
    assert F.mutual_information(apart, tight, z, batch_size=16).item() == pytest.approx(math.log(16) + own, abs=1e-4)
    assert abs(own) < 0.8  # > 5 standard deviations


def test_mutual_information_sampling_reproducible_and_gradient_through_reference(backend_name):
    mu, logvar = posterior(20, 3, dtype=torch.float32, grad=False)
    a = F.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(2))
    b = F.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    mu.requires_grad_()
    value = F.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(value, mu)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(value.detach(), a)


def test_active_units():
    mu = torch.randn(50, 5, dtype=torch.float64)
    mu[:, 1] *= 0.01  # variance ~1e-4: inactive
    mu[:, 3] = 7.0  # constant: inactive
    count, var = F.active_units(mu)
    np.testing.assert_allclose(var.numpy(), np.var(mu.numpy(), axis=0, ddof=1), rtol=1e-12)
    assert count == int((var >= 0.01).sum()) and count <= 3
    exact = torch.tensor([[0.0], [0.2]], dtype=torch.float64)  # unbiased variance exactly 0.02
    assert F.active_units(exact, threshold=0.02)[0] == 1  # ">=" threshold
    assert F.active_units(mu.half())[1].dtype == torch.float32


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,error,match", [
    (lambda m, v: F.free_bits_kl(m, v[:, :-1], 1.0, "dim"), ValueError, "same shape"),
    (lambda m, v: F.free_bits_kl(m[0], v[0], 1.0, "dim"), ValueError, r"\[batch, latent_dim\]"),
    (lambda m, v: F.kl_per_dim(m.long(), v.long()), TypeError, "floating dtype"),
    (lambda m, v: F.free_bits_kl(m, v, 1.0, "fb2"), ValueError, "unknown free-bits mode 'fb2'"),
    (lambda m, v: F.free_bits_kl(m, v, -1.0, "dim"), ValueError, ">= 0"),
    (lambda m, v: F.free_bits_kl(m, v, float("nan"), "dim"), ValueError, "finite"),
    (lambda m, v: F.sample_and_kl(m, v, 1, "2", "dim"), TypeError, "number"),
    (lambda m, v: F.free_bits_kl(m, v.float(), 1.0, "none"), TypeError, "same dtype"),
    (lambda m, v: F.reparameterize(m, v, nsamples=0), ValueError, "positive int"),
    (lambda m, v: F.reparameterize(m, v, generator=123), TypeError, "torch.Generator"),
    (lambda m, v: F.reparameterize(m[:0], v[:0]), ValueError, "empty"),
    (lambda m, v: F.gaussian_log_prob(m[:, :-1], m, v), ValueError, "z must be"),
    (lambda m, v: F.gaussian_log_prob(m.unsqueeze(0).unsqueeze(0), m, v), ValueError, "shape"),
    (lambda m, v: F.mutual_information(m, v, m[:-1]), ValueError, "one sample per row"),
    (lambda m, v: F.mutual_information(m, v, batch_size=0), ValueError, "batch_size"),
    (lambda m, v: F.active_units(m[:1]), ValueError, "at least 2 rows"),
    (lambda m, v: F.active_units(m, threshold=-1), ValueError, "threshold"),
    (lambda m, v: F.kl_per_dim(m.numpy(), v), TypeError, "torch.Tensor"),
])
def test_bad_input_raises_clear_error(call, error, match):
    mu, logvar = posterior(4, 3, grad=False)
    with pytest.raises(error, match=match):
        call(mu, logvar)


@pytest.mark.triton
def test_triton_backend_on_cpu_without_interpreter_preset():
    """A user's process: FASTVAE_BACKEND=triton, TRITON_INTERPRET unset, a torch-only op first.
    fastvae switches the interpreter on before triton is imported, and the kernels run."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, fastvae.functional as F\n"
        "mu, lv = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)\n"
        "kl = F.kl_per_dim(mu, lv)\n"
        "loss = F.free_bits_kl(mu, lv, 0.5, 'dim')\n"
        "z, l2, _ = F.sample_and_kl(mu, lv, 2, 0.5, 'kingma')\n"
        "import os; assert os.environ['TRITON_INTERPRET'] == '1'\n"
        "want = torch.where(kl > 0.5 / 4, kl, torch.zeros_like(kl)).sum() / 5\n"
        "torch.testing.assert_close(loss, want)\n"
        "print('ok', float(F.mutual_information(mu, lv)))\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["FASTVAE_BACKEND"] = "triton"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
