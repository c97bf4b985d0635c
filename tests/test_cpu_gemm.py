"""The CPU float32 products of the fused ops (csrc/gemm.h): oneDNN or ATen, chosen once per process by a fixed
rule. Both paths against the float64 references (fresh random inputs, odd shapes, chunks that accumulate the
weight gradient, extreme values, NaN), against each other, the rule itself, and bad settings."""
import os
import subprocess
import sys

import pytest
import torch

from fastvae import backend
from fastvae.precision import cpuinfo_field
from fastvae.ops import (linear_cross_entropy, linear_cross_entropy_reference, lstm_sequence,
                         lstm_sequence_reference, lstm_step, lstm_step_reference)

pytestmark = pytest.mark.skipif(not backend.cpp_available("cpu"), reason="fastvae._C is not built")


def _core():
    import fastvae._C as core

    return core


def _onednn_usable() -> bool:
    core = _core()
    try:
        core.set_cpu_fp32_gemm_backend("onednn")
        return True
    except RuntimeError:
        return False
    finally:
        core.set_cpu_fp32_gemm_backend("auto")


BACKENDS = ["aten", pytest.param("onednn", marks=pytest.mark.skipif(
    not backend.cpp_available("cpu") or not _onednn_usable(), reason="this torch's oneDNN refuses float32"))]


@pytest.fixture(params=BACKENDS)
def gemm_backend(request):
    core = _core()
    core.set_cpu_fp32_gemm_backend(request.param)
    assert core.cpu_fp32_gemm_backend() == request.param
    yield request.param
    core.set_cpu_fp32_gemm_backend("auto")


def _cross_entropy(fn, hidden, weight, target, scale, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss, nll = fn(h, w, target, scale, **kw)
    gh, gw = torch.autograd.grad(loss * 1.3, (h, w))
    return loss.detach(), nll, gh, gw


@pytest.mark.parametrize("N,H,V,chunk", [(1, 1, 1, 2**22), (37, 16, 53, 53 * 5), (70, 24, 333, 700),
                                         (129, 65, 1001, 2**22)])
def test_cross_entropy_products_match_float64(gemm_backend, N, H, V, chunk):
    hidden = torch.randn(N, H) * 2
    weight = torch.randn(V, H) / H ** 0.5
    target = torch.randint(V, (N,))
    scale = torch.rand(N)
    got = _cross_entropy(linear_cross_entropy, hidden, weight, target, scale, max_chunk_elems=chunk)
    want = _cross_entropy(linear_cross_entropy_reference, hidden.double(), weight.double(), target, scale.double())
    for name, a, b in zip(("loss", "nll", "grad hidden", "grad weight"), got, want):
        assert torch.allclose(a.double(), b, atol=3e-5, rtol=1e-4), \
            f"{gemm_backend} {name}: max error {(a.double() - b).abs().max().item()}"


@pytest.mark.parametrize("B,K,T,H", [(1, 1, 1, 1), (37, 1, 5, 50), (3, 4, 17, 7), (33, 2, 6, 40)])
def test_recurrence_products_match_float64(gemm_backend, B, K, T, H):
    G = 4 * H
    inputs = [torch.randn(B, T, G), torch.randn(B, K, G), torch.randn(B, K, H).tanh(), torch.randn(B, K, H),
              torch.randn(G, H) / H ** 0.5]
    ours = [t.clone().requires_grad_() for t in inputs]
    ref = [t.double().requires_grad_() for t in inputs]
    h_all, c_last = lstm_sequence(*ours)
    h_ref, c_ref = lstm_sequence_reference(*ref)
    grad_h, grad_c = torch.randn_like(h_ref), torch.randn_like(c_ref)
    torch.autograd.backward([h_all, c_last], [grad_h.float(), grad_c.float()])
    torch.autograd.backward([h_ref, c_ref], [grad_h, grad_c])
    assert torch.allclose(h_all.double(), h_ref, atol=1e-5, rtol=1e-4)
    for name, a, b in zip(("input_gates", "sample_gates", "h0", "c0", "weight_hh"), ours, ref):
        assert torch.allclose(a.grad.double(), b.grad, atol=1e-4, rtol=1e-3), f"{gemm_backend} grad {name}"


def test_single_step_products_match_float64(gemm_backend):
    B, H = 9, 13
    inputs = [torch.randn(B, 4 * H), torch.randn(B, H).tanh(), torch.randn(B, H), torch.randn(4 * H, H) / H ** 0.5]
    ours = [t.clone().requires_grad_() for t in inputs]
    ref = [t.double().requires_grad_() for t in inputs]
    h, c = lstm_step(*ours)
    h_ref, c_ref = lstm_step_reference(*ref)
    (h.sum() + 2 * c.sum()).backward()
    (h_ref.sum() + 2 * c_ref.sum()).backward()
    assert torch.allclose(h.double(), h_ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(ours, ref):
        assert torch.allclose(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4)


def test_extreme_values_and_nan_pass_through_both_paths(gemm_backend):
    hidden = torch.full((4, 8), 1e4)
    weight = torch.randn(30, 8)
    target = torch.randint(30, (4,))
    loss, nll = linear_cross_entropy(hidden, weight, target, torch.ones(4))
    assert torch.isfinite(nll).all()
    hidden[1, 3] = float("nan")
    _, nll = linear_cross_entropy(hidden, weight, target, torch.ones(4))
    assert torch.isnan(nll[1]) and torch.isfinite(nll[[0, 2, 3]]).all()


def test_the_two_paths_agree_to_float32_rounding():
    core = _core()
    if not _onednn_usable():
        pytest.skip("this torch's oneDNN refuses float32")
    hidden, weight = torch.randn(200, 96), torch.randn(777, 96) / 10
    target, scale = torch.randint(777, (200,)), torch.rand(200)
    results = {}
    try:
        for name in ("aten", "onednn"):
            core.set_cpu_fp32_gemm_backend(name)
            results[name] = _cross_entropy(linear_cross_entropy, hidden, weight, target, scale, max_chunk_elems=7770)
    finally:
        core.set_cpu_fp32_gemm_backend("auto")
    for a, b in zip(results["aten"], results["onednn"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_auto_takes_onednn_exactly_on_x86_cpus_not_made_by_intel():
    core = _core()
    core.set_cpu_fp32_gemm_backend("auto")
    import platform

    x86 = platform.machine() in ("x86_64", "AMD64", "i686")
    vendor = cpuinfo_field("vendor_id")
    expected = "onednn" if x86 and vendor not in (None, "GenuineIntel") and _onednn_usable() else "aten"
    core.set_cpu_fp32_gemm_backend("auto")
    assert core.cpu_fp32_gemm_backend() == expected


def _backend_in_fresh_process(value):
    env = {**os.environ, "FASTVAE_CPU_FP32_GEMM": value}
    code = ("import fastvae, torch, fastvae._C as core\n"
            "from fastvae.ops import linear_cross_entropy\n"
            "linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]), torch.ones(3))\n"
            "print(core.cpu_fp32_gemm_backend())")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_chooses_and_a_bad_name_is_a_clear_error():
    done = _backend_in_fresh_process("aten")
    assert done.returncode == 0 and done.stdout.strip() == "aten", done.stderr[-500:]
    done = _backend_in_fresh_process("blas")
    assert done.returncode != 0 and "expected auto, onednn or aten, got 'blas'" in done.stderr
    with pytest.raises(RuntimeError, match="expected auto, onednn or aten"):
        _core().set_cpu_fp32_gemm_backend("mkl")
