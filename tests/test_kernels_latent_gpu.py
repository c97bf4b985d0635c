"""The latent Triton kernels compiled for a CUDA device (the other test_kernels_* files run them in
the interpreter on CPU tensors).

tests/conftest.py turns the interpreter on for the whole suite, so the GPU check runs in a child
process with TRITON_INTERPRET=0. The same checks also run here on CPU tensors in the interpreter
(small sizes), so the GPU path cannot rot unnoticed on machines without a GPU.
Run by hand on a GPU machine: python tests/test_kernels_latent_gpu.py cuda
"""
import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import separating_target

from fastvae.kernels.free_bits import FREE_BITS_MODES


def _kernels(name):
    return importlib.import_module(f"fastvae.kernels.{name}")


def _close(name, got, want, atol, rtol):
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


def _posterior(batch, dims, device, dtype):
    mu = torch.randn(batch, dims, device=device, dtype=torch.float64)
    logvar = torch.randn(batch, dims, device=device, dtype=torch.float64) - 0.5
    return mu.to(dtype), logvar.to(dtype)


def check_all(device: str, big_n: int) -> list:
    """Every latent kernel on `device` against float64 references; raises AssertionError on a mismatch."""
    report = []
    kl_mod, sk_mod = _kernels("kl_free_bits"), _kernels("sample_and_kl")
    rp_mod, lp_mod, mi_mod = _kernels("reparameterize"), _kernels("gaussian_log_prob"), _kernels("mutual_information")
    tol = {torch.float32: (3e-5, 3e-5), torch.bfloat16: (2e-2, 2e-2)}
    shapes = [(4096, 1, 32), (41, 3, 37), (1, 2, 8)] if device != "cpu" else [(41, 3, 37), (1, 2, 8)]
    for dtype in (torch.float32, torch.bfloat16):
        atol, rtol = tol[dtype]
        for batch, samples, dims in shapes:
            mu, logvar = _posterior(batch, dims, device, dtype)
            eps = torch.randn(batch, samples, dims, device=device)
            upstream = torch.randn(batch, samples, dims, device=device, dtype=torch.float64)
            target = separating_target(kl_mod.kl_per_dim_reference(mu.double(), logvar.double()).sum(1))
            for mode in FREE_BITS_MODES:
                results = []
                for fn, cast in ((sk_mod.sample_and_kl_triton, lambda t: t),
                                 (sk_mod.sample_and_kl_reference, lambda t: t.double())):
                    m, v = cast(mu).detach().requires_grad_(), cast(logvar).detach().requires_grad_()
                    z, loss, kl_mean = fn(m, v, cast(eps), target, mode)
                    ((z.double() * upstream).sum() - 1.5 * loss).backward()
                    results.append((z, loss, kl_mean, m.grad, v.grad))
                for name, got, want in zip(("z", "loss", "kl_mean", "dmu", "dlogvar"), *results):
                    want = want.to(got.dtype) if name in ("z", "dmu", "dlogvar") else want
                    _close(f"sample_and_kl {mode} {dtype} {(batch, samples, dims)} {name}", got, want, atol, rtol)
                m, v = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
                loss, _ = kl_mod.free_bits_kl_triton(m, v, target, mode)
                (2.0 * loss).backward()
                m2, v2 = mu.double().requires_grad_(), logvar.double().requires_grad_()
                loss2, _ = kl_mod.free_bits_kl_reference(m2, v2, target, mode)
                (2.0 * loss2).backward()
                _close(f"free_bits_kl {mode} {dtype} loss", loss, loss2, atol, rtol)
                _close(f"free_bits_kl {mode} {dtype} dmu", m.grad, m2.grad.to(dtype), atol, rtol)
                _close(f"free_bits_kl {mode} {dtype} dlogvar", v.grad, v2.grad.to(dtype), atol, rtol)
            m, v = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
            z = rp_mod.reparameterize_triton(m, v, eps)
            (z.double() * upstream).sum().backward()
            m2, v2 = mu.double().requires_grad_(), logvar.double().requires_grad_()
            z2 = rp_mod.reparameterize_reference(m2, v2, eps.double())
            (z2 * upstream).sum().backward()
            _close(f"reparameterize {dtype} z", z, z2.to(dtype), atol, rtol)
            _close(f"reparameterize {dtype} dlogvar", v.grad, v2.grad.to(dtype), atol, rtol)
    report.append("sample_and_kl, free_bits_kl, reparameterize: match float64 (fp32, bf16)")

    samples = 500 if device != "cpu" else 7
    mu, logvar = _posterior(32, 32, device, torch.float32)
    z = (mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * torch.randn(32, samples, 32, device=device))
    upstream = torch.randn(32, samples, device=device, dtype=torch.float64)
    args = [t.detach().requires_grad_() for t in (z, mu, logvar)]
    out = lp_mod.gaussian_log_prob_triton(*args)
    (out.double() * upstream).sum().backward()
    args2 = [t.double().detach().requires_grad_() for t in (z, mu, logvar)]
    out2 = lp_mod.gaussian_log_prob_reference(*args2)
    (out2 * upstream).sum().backward()
    _close("gaussian_log_prob out", out, out2, 3e-5, 3e-5)
    for name, a, b in zip(("dz", "dmu", "dlogvar"), args, args2):
        _close(f"gaussian_log_prob {name}", a.grad, b.grad.float(), 3e-5, 3e-5)
    report.append("gaussian_log_prob: matches float64")

    n_mid = 3000 if device != "cpu" else 150
    mu, logvar = _posterior(n_mid, 32, device, torch.float32)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    for segment in (n_mid, 32):
        got = mi_mod.aggregate_log_density_fwd(z, mu, logvar, segment)
        want = mi_mod.aggregate_log_density_reference(z.double(), mu.double(), logvar.double(), segment)
        _close(f"mutual_information lse segment={segment}", got, want, 1e-5, 1e-5)
    # close z, tiny variance: exact in the direct form; a tf32 or expanded-GEMM kernel fails here
    mu = (30.0 + 1e-3 * torch.randn(256, 16, device=device, dtype=torch.float64)).float()
    logvar = torch.full((256, 16), -20.0, device=device)
    z = (mu.double() + math.exp(-10.0) * torch.randn(256, 16, device=device, dtype=torch.float64)).float()
    got = mi_mod.aggregate_log_density_fwd(z, mu, logvar, 256)
    want = mi_mod.aggregate_log_density_reference(z.double(), mu.double(), logvar.double(), 256)
    _close("mutual_information close-z tiny-variance", got, want, 1e-3, 1e-5)
    report.append("mutual_information: matches float64 (whole-set, per-batch, close-z tiny-variance)")

    # the whole-set estimate at evaluation size: O(N * D) memory, first rows against the reference
    mu, logvar = _posterior(big_n, 32, device, torch.float32)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    lse = mi_mod.aggregate_log_density_fwd(z, mu, logvar, big_n)
    value = mi_mod.combine_mutual_information(lse, logvar, big_n)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        assert peak < 16 * big_n * 32 * 4, f"MI N={big_n}: peak {peak} bytes is not O(N * D)"
        report.append(f"mutual_information N={big_n} D=32: peak {peak / 2**20:.1f} MiB above inputs")
    with torch.no_grad():
        want = mi_mod._aggregate_lse_inplace(z[:256].double(), mu.double(), logvar.double(), 1 << 21)
    _close(f"mutual_information N={big_n} first rows", lse[:256], want, 1e-5, 1e-5)
    assert torch.isfinite(value) and value.item() <= math.log(big_n) + 1.0, value
    report.append(f"mutual_information N={big_n}: {value.item():.4f} nats, finite, matches reference rows")
    return report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernels_on_gpu():
    env = dict(os.environ, TRITON_INTERPRET="0", FASTVAE_BACKEND="auto")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "cuda"], env=env, capture_output=True,
                          text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_checks_in_the_interpreter():
    """The GPU check itself, on CPU tensors through the interpreter at small sizes."""
    report = " | ".join(check_all("cpu", big_n=300))
    for op in ("sample_and_kl", "gaussian_log_prob", "close-z", "N=300"):
        assert op in report


if __name__ == "__main__":
    for line in check_all(sys.argv[1] if len(sys.argv) > 1 else "cuda", big_n=100_000):
        print(line)
