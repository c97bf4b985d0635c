"""The fused LSTM ops (fastvae.ops.lstm_sequence / lstm_step, torch.ops.fastvae.*) against plain torch."""
import pytest
import torch

from fastvae import backend
from fastvae.ops import lstm_sequence, lstm_sequence_reference, lstm_step, lstm_step_reference

cpp = pytest.mark.skipif(not backend.cpp_available("cpu"), reason="fastvae._C is not built")


def make_sequence_inputs(B, K, T, H, dtype=torch.float32, device="cpu", scale=1.0, requires_grad=False):
    G = 4 * H
    tensors = [torch.randn(B, T, G, dtype=dtype, device=device) * scale,
               torch.randn(B, K, G, dtype=dtype, device=device) * scale,
               torch.randn(B, K, H, dtype=dtype, device=device).tanh(),
               torch.randn(B, K, H, dtype=dtype, device=device),
               torch.randn(G, H, dtype=dtype, device=device) / H ** 0.5]
    return [t.requires_grad_(requires_grad) for t in tensors]


def first_mismatch(got, want, atol, rtol):
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol)
    if not bad.any():
        return ""
    idx = tuple(bad.nonzero()[0].tolist())
    return f"first mismatch at {idx}: got {got[idx].item()}, want {want[idx].item()}"


def assert_close(got, want, atol, rtol, what=""):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.allclose(got, want, atol=atol, rtol=rtol), f"{what}: {first_mismatch(got, want, atol, rtol)}"


SHAPES = [(1, 1, 1, 1), (37, 1, 5, 50), (3, 4, 60, 7), (2, 5, 9, 16), (1, 1, 60, 50)]


@cpp
@pytest.mark.parametrize("B,K,T,H", SHAPES)
def test_sequence_forward_and_gradients_match_reference(B, K, T, H):
    inputs = make_sequence_inputs(B, K, T, H, requires_grad=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    h_all, c_last = lstm_sequence(*inputs)
    h_ref, c_ref = lstm_sequence_reference(*ref_inputs)
    assert_close(h_all.double(), h_ref, 1e-5, 1e-4, "h_all")
    assert_close(c_last.double(), c_ref, 1e-5, 1e-4, "c_last")
    grad_h = torch.randn_like(h_ref) * 2  # an upstream gradient that is not 1
    grad_c = torch.randn_like(c_ref)
    torch.autograd.backward([h_all, c_last], [grad_h.float(), grad_c.float()])
    torch.autograd.backward([h_ref, c_ref], [grad_h, grad_c])
    for name, got, want in zip(["input_gates", "sample_gates", "h0", "c0", "weight_hh"], inputs, ref_inputs):
        assert_close(got.grad.double(), want.grad, 1e-4, 1e-3, f"grad {name}")


@cpp
def test_sequence_only_h_used_and_time_zero():
    inputs = make_sequence_inputs(2, 3, 4, 5, requires_grad=True)
    h_all, _ = lstm_sequence(*inputs)  # c_last unused: its gradient is None inside the backward
    h_all.sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    lstm_sequence_reference(*ref)[0].sum().backward()
    for got, want in zip(inputs, ref):
        assert_close(got.grad, want.grad, 1e-5, 1e-4)
    empty = make_sequence_inputs(2, 3, 0, 5)
    h_all, c_last = lstm_sequence(*empty)
    assert h_all.shape == (2, 3, 0, 5)
    assert torch.equal(c_last, empty[3])


@cpp
def test_sequence_skips_gradients_nobody_needs():
    """Only z's path needs a gradient (the aggressive recipe's encoder steps): weight_hh gets none."""
    inputs = make_sequence_inputs(3, 2, 6, 8)
    inputs[1].requires_grad_()
    inputs[3].requires_grad_()
    ref = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    upstream = torch.randn(3, 2, 6, 8)
    h_all, _ = lstm_sequence(*inputs)
    (h_all * upstream).sum().backward()
    h_ref, _ = lstm_sequence_reference(*ref)
    (h_ref * upstream).sum().backward()
    assert inputs[4].grad is None and inputs[0].grad is None
    assert_close(inputs[1].grad, ref[1].grad, 1e-5, 1e-4, "sample_gates")
    assert_close(inputs[3].grad, ref[3].grad, 1e-5, 1e-4, "c0")


@cpp
def test_sequence_saves_nothing_without_grad():
    inputs = make_sequence_inputs(2, 2, 3, 4)
    h_all, c_last, c_all, act = torch.ops.fastvae.lstm_sequence_forward(*inputs, False)
    assert c_all.numel() == 0 and act.numel() == 0
    h_ref, c_ref = lstm_sequence_reference(*inputs)
    assert_close(h_all, h_ref, 1e-5, 1e-4)
    assert_close(c_last, c_ref, 1e-5, 1e-4)
    with pytest.raises(RuntimeError, match="did not save its state"):
        torch.ops.fastvae.lstm_sequence_backward(h_all, None, inputs[2], inputs[3], inputs[4], h_all, c_all, act,
                                                 [True, True, True])


@cpp
def test_sequence_extreme_values_stay_finite():
    inputs = make_sequence_inputs(4, 2, 7, 6, scale=1e4, requires_grad=True)
    h_all, c_last = lstm_sequence(*inputs)
    h_ref, c_ref = lstm_sequence_reference(*[t.detach().double() for t in inputs])
    assert torch.isfinite(h_all).all() and torch.isfinite(c_last).all()
    # a gate is a float32 sum of 1e4-sized terms (rounding ~1e4 * 2**-24 = 6e-4); where the sum cancels near zero
    # that rounding reaches h (seen: 6e-5 at h = 0.29 for one seed in seven), so the bound is the inputs' rounding
    assert_close(h_all.double(), h_ref, 2e-3, 1e-3, "saturated h_all")
    (h_all.sum() + c_last.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


@cpp
def test_sequence_nan_propagates_and_float32_activations_are_accurate():
    inputs = make_sequence_inputs(3, 1, 4, 6)
    inputs[0][1, 2, 3] = float("nan")
    h_all, _ = lstm_sequence(*inputs)
    assert torch.isnan(h_all[1, 0, 2:]).any() and torch.isfinite(h_all[1, 0, :2]).all()
    assert torch.isfinite(h_all[0]).all() and torch.isfinite(h_all[2]).all()  # other rows untouched
    # The float32 path computes exp without a library call: check it over the whole useful range.
    gates = torch.linspace(-100, 100, 4 * 4001).view(4001, 4)
    gates = gates.repeat(1, 4)[:, :16].contiguous()
    c_prev = torch.randn(4001, 4)
    got = torch.ops.fastvae.lstm_cell_forward(gates, c_prev)
    from fastvae.ops import lstm_cell_reference
    want = lstm_cell_reference(gates.double(), c_prev.double())
    for g, w in zip(got, want):
        assert_close(g.double(), w, 3e-7, 1e-6)


@cpp
@pytest.mark.parametrize("B,K", [(37, 3), (5, 7)])
def test_sequence_many_rows_split_across_threads(B, K):
    inputs = make_sequence_inputs(B, K, 4, 9, requires_grad=True)
    h_all, c_last = lstm_sequence(*inputs)
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    h_ref, c_ref = lstm_sequence_reference(*ref)
    assert_close(h_all, h_ref, 1e-5, 1e-4)
    upstream = torch.randn_like(h_ref)
    (h_all * upstream).sum().backward()
    (h_ref * upstream).sum().backward()
    for got, want in zip(inputs, ref):
        assert_close(got.grad, want.grad, 1e-4, 1e-3)


@cpp
def test_sequence_non_contiguous_inputs():
    B, K, T, H = 3, 2, 5, 4
    strided = [torch.randn(T, B, 4 * H).transpose(0, 1), torch.randn(K, B, 4 * H).transpose(0, 1),
               torch.randn(K, B, H).transpose(0, 1), torch.randn(K, B, H).transpose(0, 1),
               torch.randn(H, 4 * H).t()]
    assert not any(t.is_contiguous() for t in strided)
    got = lstm_sequence(*strided)
    want = lstm_sequence_reference(*[t.contiguous() for t in strided])
    for g, w in zip(got, want):
        assert_close(g, w, 1e-5, 1e-4)


@cpp
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_sequence_low_precision_within_twice_torch_error(dtype, tol):
    inputs64 = make_sequence_inputs(4, 2, 8, 16, dtype=torch.float64)
    h_ref, _ = lstm_sequence_reference(*inputs64)
    low = [t.to(dtype) for t in inputs64]
    h_fast, _ = lstm_sequence(*low)
    h_torch, _ = lstm_sequence_reference(*low)
    assert h_fast.dtype == dtype
    fast_err = (h_fast.double() - h_ref).abs().max().item()
    torch_err = (h_torch.double() - h_ref).abs().max().item()
    assert fast_err <= max(2 * torch_err, tol), (fast_err, torch_err)


@cpp
def test_sequence_gradcheck_float64():
    inputs = make_sequence_inputs(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: lstm_sequence(*a), inputs)


@cpp
def test_step_matches_reference_and_gradcheck():
    N, H = 37, 50
    x = torch.randn(N, 4 * H, requires_grad=True)
    h = torch.randn(N, H, requires_grad=True)
    c = torch.randn(N, H, requires_grad=True)
    w = (torch.randn(4 * H, H) / H ** 0.5).requires_grad_()
    got = lstm_step(x, h, c, w)
    ref_in = [t.detach().double().requires_grad_() for t in (x, h, c, w)]
    want = lstm_step_reference(*ref_in)
    gh, gc = torch.randn(N, H, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
    torch.autograd.backward(got, [gh.float(), gc.float()])
    torch.autograd.backward(want, [gh, gc])
    for g, r in zip(got, want):
        assert_close(g.double(), r, 1e-5, 1e-4)
    for t, r in zip((x, h, c, w), ref_in):
        assert_close(t.grad.double(), r.grad, 1e-4, 1e-3)
    small = [torch.randn(3, 8, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
             torch.randn(8, 2, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: lstm_step(*a), small)
    # Only h_new used (c_new's gradient is None), weight without grad.
    small[3].requires_grad_(False)
    assert torch.autograd.gradcheck(lambda *a: lstm_step(*a, small[3])[0], small[:3])


@cpp
def test_opcheck_sequence_and_step():
    seq = make_sequence_inputs(2, 2, 3, 4, requires_grad=True)
    for save in (True, False):
        torch.library.opcheck(torch.ops.fastvae.lstm_sequence_forward.default, (*seq, save),
                              test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastvae.lstm_sequence_forward.default, (*seq, True))
    step = [torch.randn(3, 8, requires_grad=True), torch.randn(3, 2, requires_grad=True),
            torch.randn(3, 2, requires_grad=True), torch.randn(8, 2, requires_grad=True)]
    torch.library.opcheck(torch.ops.fastvae.lstm_step_forward.default, tuple(step))
    h_all, c_last, c_all, act = torch.ops.fastvae.lstm_sequence_forward(*[t.detach() for t in seq], True)
    torch.library.opcheck(torch.ops.fastvae.lstm_sequence_backward.default,
                          (torch.randn_like(h_all), None, seq[2].detach(), seq[3].detach(), seq[4].detach(), h_all,
                           c_all, act, [True, False, True]), test_utils=("test_schema", "test_faketensor"))


@cpp
def test_torch_backend_override_matches(monkeypatch):
    inputs = make_sequence_inputs(3, 2, 4, 5)
    fast = lstm_sequence(*inputs)
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    assert backend.select("lstm_sequence", "cpu") == "torch"
    slow = lstm_sequence(*inputs)
    for f, s in zip(fast, slow):
        assert_close(f, s, 1e-5, 1e-4)


def test_bad_inputs_python_messages():
    B, K, T, H = 2, 3, 4, 5
    x, zg, h0, c0, w = make_sequence_inputs(B, K, T, H)
    with pytest.raises(ValueError, match=r"input_gates must be \[batch, time, 4\*hidden\]"):
        lstm_sequence(x[0], zg, h0, c0, w)
    with pytest.raises(ValueError, match="weight_hh must be"):
        lstm_sequence(x, zg, h0, c0, w.t())
    with pytest.raises(ValueError, match="sample_gates must be"):
        lstm_sequence(x, zg[:1], h0, c0, w)
    with pytest.raises(ValueError, match="h0 must be"):
        lstm_sequence(x, zg, h0[:, :1], c0, w)
    with pytest.raises(TypeError, match="share one dtype"):
        lstm_sequence(x, zg.double(), h0, c0, w)
    with pytest.raises(TypeError, match="floating-point"):
        lstm_sequence(*[t.long() for t in (x, zg, h0, c0, w)])
    with pytest.raises(ValueError, match="shapes do not match"):
        lstm_step(torch.zeros(3, 8), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(8, 3))


@cpp
def test_bad_inputs_cpp_messages():
    B, K, T, H = 2, 3, 4, 5
    x, zg, h0, c0, w = make_sequence_inputs(B, K, T, H)
    with pytest.raises(RuntimeError, match="weight_hh must be"):
        torch.ops.fastvae.lstm_sequence_forward(x, zg, h0, c0, w[:, :2], False)
    with pytest.raises(RuntimeError, match="h0 must be"):
        torch.ops.fastvae.lstm_sequence_forward(x, zg, h0[:1], c0, w, False)
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.fastvae.lstm_sequence_forward(x, zg, h0, c0.double(), w, False)
    with pytest.raises(RuntimeError, match="input_gates must be"):
        torch.ops.fastvae.lstm_step_forward(torch.zeros(3, 7), torch.zeros(3, 2), torch.zeros(3, 2),
                                            torch.zeros(8, 2))


# ------------------------------------------------------------------ GPU (skipped without CUDA)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sequence_matches_cpu(dtype, tol):
    backend.require_cpp("cuda")
    inputs = make_sequence_inputs(5, 3, 11, 32, dtype=dtype, requires_grad=True)
    cuda_inputs = [t.detach().cuda().requires_grad_() for t in inputs]
    h_cpu, c_cpu = lstm_sequence(*inputs)
    h_gpu, c_gpu = lstm_sequence(*cuda_inputs)
    assert_close(h_gpu.cpu(), h_cpu.detach(), tol, tol, "h_all")
    assert_close(c_gpu.cpu(), c_cpu.detach(), tol, tol, "c_last")
    grad = torch.randn_like(h_cpu)
    h_cpu.backward(grad)
    h_gpu.backward(grad.cuda())
    for a, b in zip(inputs, cuda_inputs):
        assert_close(b.grad.cpu(), a.grad, 10 * tol, 10 * tol, "grad")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sequence_matches_cudnn_and_half(monkeypatch):
    backend.require_cpp("cuda")
    # cuDNN's LSTM may use TF32 (torch's default allows it): on an H200 that moved states by ~1e-4, beyond the
    # tolerance; full float32 on both sides is the comparison meant here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    B, T, E, H = 8, 20, 24, 32
    lstm = torch.nn.LSTM(E, H, batch_first=True).cuda()
    x = torch.randn(B, T, E, device="cuda")
    h0 = torch.randn(1, B, H, device="cuda").tanh()
    c0 = torch.randn(1, B, H, device="cuda")
    want, (h_n, c_n) = lstm(x, (h0, c0))
    input_gates = torch.nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    zero = torch.zeros(B, 1, 4 * H, device="cuda")
    got, c_last = lstm_sequence(input_gates, zero, h0[0, :, None], c0[0, :, None], lstm.weight_hh_l0)
    assert_close(got[:, 0], want, 1e-4, 1e-3, "vs cuDNN")
    assert_close(c_last[:, 0], c_n[0], 1e-4, 1e-3, "c_n vs cuDNN")
    half = lstm_sequence(input_gates.half(), zero.half(), h0[0, :, None].half(), c0[0, :, None].half(),
                         lstm.weight_hh_l0.half())[0]
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.float()[:, 0] - want).abs().max().item() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_matches_cpu():
    backend.require_cpp("cuda")
    args = [torch.randn(9, 4 * 13), torch.randn(9, 13), torch.randn(9, 13), torch.randn(4 * 13, 13) * 0.2]
    want = lstm_step(*args)
    got = lstm_step(*[a.cuda() for a in args])
    for g, w in zip(got, want):
        assert_close(g.cpu(), w, 1e-5, 1e-4)


@cpp
@pytest.mark.parametrize("B,K,T,H", [(3, 2, 5, 8), (1, 1, 1, 1), (33, 1, 12, 40)])
def test_sequence_bfloat16_weight_copy_matches_its_reference(B, K, T, H):
    """weight_hh_compute (bfloat16 per-step GEMMs): equal to the plain-torch recurrence with the same bf16 GEMMs,
    forward and backward, and as close to float64 as autocast-style bf16 (error norm within 1.5x)."""
    inputs = make_sequence_inputs(B, K, T, H, requires_grad=True)
    copy = inputs[4].detach().to(torch.bfloat16)
    h_all, c_last = lstm_sequence(*inputs, weight_hh_compute=copy)
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    h_ref, c_ref = lstm_sequence_reference(*ref, compute_dtype=torch.bfloat16)
    # the same bf16 GEMMs; a product that rounds the other way in bf16 (another summation order) moves a state
    # by a bf16 ulp, so equal to bf16 accuracy, not bitwise
    assert_close(h_all, h_ref, 2e-3, 1e-2, "h_all")
    grad_h = torch.randn_like(h_all)
    torch.autograd.backward([h_all, c_last], [grad_h, torch.ones_like(c_last)])
    exact = [t.detach().double().requires_grad_() for t in inputs]
    h_exact, c_exact = lstm_sequence_reference(*exact)
    torch.autograd.backward([h_exact, c_exact], [grad_h.double(), torch.ones_like(c_exact)])
    autocast_in = [t.detach().clone().requires_grad_() for t in inputs]
    h_ac, c_ac = lstm_sequence_reference(*autocast_in, compute_dtype=torch.bfloat16)
    torch.autograd.backward([h_ac, c_ac], [grad_h, torch.ones_like(c_ac)])
    # Against float64, our error and the bf16 reference's: the norm within 1.5x, the largest element within 4x.
    # The largest element is heavy-tailed (the weight gradient's GEMM runs in bf16 here): over 150 seeds x these
    # shapes the norm ratio reached 1.30 and the largest-element ratio 2.28 (a 2x bound on it failed CI).
    def within_bf16_reference(name, ours, theirs, tiny):
        assert ours.norm() <= 1.5 * theirs.norm() + tiny, f"{name}: error norm {ours.norm():.3g} vs {theirs.norm():.3g}"
        assert ours.abs().max() <= 4 * theirs.abs().max() + tiny, \
            f"{name}: largest error {ours.abs().max():.3g} vs the bf16 reference's {theirs.abs().max():.3g}"

    within_bf16_reference("h_all", h_all.detach().double() - h_exact.detach(),
                          h_ac.detach().double() - h_exact.detach(), 1e-6)
    for name, got, theirs, want in zip(["input_gates", "sample_gates", "h0", "c0", "weight_hh"], inputs, autocast_in,
                                       exact):
        within_bf16_reference(f"grad {name}", got.grad.double() - want.grad, theirs.grad.double() - want.grad, 1e-5)
    with pytest.raises(ValueError, match="weight_hh_compute must be"):
        lstm_sequence(*inputs, weight_hh_compute=copy[:1])
