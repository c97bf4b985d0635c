"""The CUDA side of the fast path on a real GPU (skipped without one; scripts/gpu_check.sh runs them on a lent
machine): the fused output layer + cross-entropy's CUDA registration against the plain-torch reference (float64
to rounding, float32, a bfloat16 weight copy against PyTorch's own bfloat16 error, extreme logits, gradcheck),
the bfloat16 decoder against float32, and whole training runs on the GPU in both precisions. The same checks of
the CPU kernels are in test_linear_cross_entropy.py and test_decoder.py."""
import math

import pytest
import torch
from helpers import assert_error_within_pytorch_bf16

from fastvae import backend
from fastvae.ops import linear_cross_entropy, linear_cross_entropy_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _inputs(N, H, V, dtype, scale=1.0, device="cuda"):
    hidden = torch.randn(N, H, dtype=torch.float64) * scale
    weight = torch.randn(V, H, dtype=torch.float64) / H ** 0.5
    target = torch.randint(V, (N,))
    row_scale = torch.rand(N, dtype=torch.float64)
    row_scale[::3] = 0  # padding rows
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (hidden.to(device, dtype), weight.to(device, dtype), target.to(device), row_scale.to(device, acc))


def _run(fn, hidden, weight, target, row_scale, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss, nll = fn(h, w, target, row_scale, **kw)
    gh, gw = torch.autograd.grad(loss * 1.7, (h, w))  # an upstream gradient that is not 1
    return [t.detach().double().cpu() for t in (loss, nll, gh, gw)]


def _require_cuda_core():
    backend.require_cpp("cuda")
    assert backend.select("linear_cross_entropy", "cuda") == backend.CPP


@pytest.mark.parametrize("N,H,V,chunk", [(129, 64, 1000, 2**22), (37, 16, 53, 53 * 5), (5, 33, 7, 1),
                                         (300, 128, 6446, 6446 * 7)])
def test_fused_cross_entropy_cuda_float64_to_rounding(N, H, V, chunk):
    _require_cuda_core()
    inputs = _inputs(N, H, V, torch.float64, scale=3.0)
    got = _run(linear_cross_entropy, *inputs, max_chunk_elems=chunk)
    want = _run(linear_cross_entropy_reference, *[t.cpu() for t in inputs])
    for name, a, b in zip(("loss", "nll", "grad hidden", "grad weight"), got, want):
        assert torch.allclose(a, b, atol=1e-11, rtol=1e-10), f"{name}: max error {(a - b).abs().max().item()}"


@pytest.mark.parametrize("chunk", [2**22, 700])
def test_fused_cross_entropy_cuda_float32(chunk):
    _require_cuda_core()
    inputs = _inputs(70, 24, 333, torch.float32, scale=2.0)
    got = _run(linear_cross_entropy, *inputs, max_chunk_elems=chunk)
    exact = _run(linear_cross_entropy_reference, *[t.cpu().double() if t.is_floating_point() else t.cpu()
                                                    for t in inputs])
    for name, a, b in zip(("loss", "nll", "grad hidden", "grad weight"), got, exact):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"{name}: max error {(a - b).abs().max().item()}"


def test_fused_cross_entropy_cuda_bfloat16_copy_within_pytorch_bfloat16_error():
    """A bfloat16 weight copy on the GPU: the error against float64, in norm, within twice that of PyTorch's own
    autocast bf16 (the bound issue 14 asks for)."""
    _require_cuda_core()
    hidden, weight, target, row_scale = _inputs(200, 64, 900, torch.float32, scale=2.0)
    exact = _run(linear_cross_entropy_reference, hidden.double(), weight.double(), target, row_scale.double())
    got = _run(linear_cross_entropy, hidden, weight, target, row_scale,
               weight_compute=weight.detach().to(torch.bfloat16))

    def autocast_reference(h, w, t, s):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return linear_cross_entropy_reference(h, w, t, s)

    pytorch_bf16 = _run(autocast_reference, hidden, weight, target, row_scale)
    assert_error_within_pytorch_bf16(("loss", "nll", "grad hidden", "grad weight"), got, pytorch_bf16, exact,
                                     norm_factor=2.0)


@pytest.mark.parametrize("value", [1e4, -1e4, 80.0])
def test_fused_cross_entropy_cuda_extreme_logits(value):
    _require_cuda_core()
    hidden = torch.full((4, 2), value, device="cuda", dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], device="cuda", dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0], device="cuda")
    scale = torch.ones(4, device="cuda", dtype=torch.float64)
    got = _run(linear_cross_entropy, hidden, weight, target, scale)
    want = _run(linear_cross_entropy_reference, hidden.cpu(), weight.cpu(), target.cpu(), scale.cpu())
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_fused_cross_entropy_cuda_gradcheck_float64():
    _require_cuda_core()
    hidden, weight, target, row_scale = _inputs(6, 3, 11, torch.float64)
    hidden.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, target, row_scale, max_chunk_elems=22)[0], (hidden, weight))


def test_fused_cross_entropy_cuda_bad_input_is_a_clear_error():
    _require_cuda_core()
    hidden, weight, target, row_scale = _inputs(8, 4, 10, torch.float32)
    with pytest.raises(ValueError, match="one device"):
        linear_cross_entropy(hidden, weight.cpu(), target, row_scale)


def test_bfloat16_decoder_on_gpu_close_to_float32():
    """The decoder's bf16 mode (weight copies, bf16 recurrent GEMMs, fused loss) on CUDA tensors: per-sentence
    log-likelihoods within bf16 accuracy of the float32 model, and finite float32 gradients."""
    from fastvae.nn import LSTMDecoder

    backend.require_cpp("cuda")
    decoder = LSTMDecoder(500, 64, 128, 16, dropout_in=0.0, dropout_out=0.0).cuda()
    inputs = torch.randint(1, 500, (16, 14), device="cuda")
    z = torch.randn(16, 16, device="cuda")
    want = decoder.token_log_likelihood(inputs, inputs, z).detach()
    decoder.set_compute_dtype(torch.bfloat16)
    got = decoder.token_log_likelihood(inputs, inputs, z)
    assert got.dtype == torch.float32
    relative = ((got.detach() - want).norm() / want.norm()).item()
    assert relative < 1e-2, f"bf16 vs fp32 relative error {relative:.3g}"
    got.sum().backward()
    for name, param in decoder.named_parameters():
        assert param.grad is None or (param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all()), name


@pytest.fixture(scope="module")
def corpus():
    from fastvae.data.builtin import grammar_corpus

    return grammar_corpus(seed=3, n_train=1200, n_valid=200, n_test=200)


@pytest.mark.parametrize("recipe", ["vae", "pretrain-fb"])
def test_training_on_gpu_in_both_precisions(corpus, recipe, tmp_path):
    """A whole run on the GPU, fp32 and bf16 from the same seed: finite metrics, and the bf16 run's test ELBO within
    a few percent of the fp32 run's (the real-text comparison is benchmarks/fidelity.py)."""
    from fastvae.training import Trainer

    backend.require_cpp("cuda")
    results = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(None, corpus, recipe=recipe, out_dir=str(tmp_path / precision), config="tiny", epochs=2,
                          device="cuda", precision=precision, iw_samples=20, batch_size=32, progress=False,
                          verbose=False)
        results[precision] = trainer.fit()
    for precision, metrics in results.items():
        for key in ("elbo", "kl", "nll"):
            assert math.isfinite(metrics[key]), (precision, key, metrics)
    fp32, bf16 = results["fp32"]["elbo"], results["bf16"]["elbo"]
    assert abs(bf16 - fp32) <= 0.05 * abs(fp32), results
