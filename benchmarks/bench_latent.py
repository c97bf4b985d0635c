"""Latent ops: eager torch reference vs torch.compile of the reference vs fastvae, side by side.

Run:  pytest benchmarks/bench_latent.py --benchmark-only --benchmark-json benchmarks/results/cpu-latent.json
      (`-k quick` for one shape per op). On a CUDA machine the same file benchmarks the GPU (fastvae
      = Triton kernels there); on a CPU fastvae runs its torch fallback (the streamed MI matters most).
Each benchmark records extra_info {provider, shape, device, peak_memory_bytes}: on CUDA the
allocator's peak above the baseline, on CPU the peak of live tensor bytes seen by the profiler
during one call. Set FASTVAE_BENCH_COMPILE=0 to skip the torch.compile provider.
"""
import math
import os

import pytest
import torch

import fastvae.functional as F
from fastvae import backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DEVICE_NAME = torch.cuda.get_device_name() if ON_GPU else f"cpu ({torch.get_num_threads()} threads)"
COMPILE = os.environ.get("FASTVAE_BENCH_COMPILE", "1") != "0"
PROVIDERS = ["eager", "compile", "fastvae"]
LOG_2PI = math.log(2 * math.pi)


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


def peak_memory_bytes(fn) -> int:
    """Peak bytes of tensors allocated by one call of fn, above what was live before."""
    if ON_GPU:
        _sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def run(benchmark, op, shape, provider, fn, rounds):
    if provider == "compile" and not COMPILE:
        pytest.skip("FASTVAE_BENCH_COMPILE=0")
    fn()  # warm-up (and compilation)
    _sync()
    peak = peak_memory_bytes(fn)
    benchmark.group = f"{op} {shape}"
    benchmark.extra_info.update(provider=provider, shape=shape, device=DEVICE_NAME, peak_memory_bytes=peak,
                                backend=backend.select(op, DEVICE) if op in backend.OPS else "torch")

    def call():
        fn()
        _sync()

    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


def posterior(batch, dims, grad=True):
    mu = torch.randn(batch, dims, device=DEVICE)
    logvar = torch.randn(batch, dims, device=DEVICE) - 1.0
    return mu.requires_grad_(grad), logvar.requires_grad_(grad)


# ---------------------------------------------------------------- fused sample + KL, forward + backward
def _sample_and_kl_eager(mu, logvar, target, mode):
    eps = torch.randn(mu.shape[0], 1, mu.shape[1], device=mu.device)
    z, loss, kl_mean = backend.reference(F.OP_SAMPLE_AND_KL, DEVICE)(mu, logvar, eps, target, mode)
    return z.squeeze(1), loss, kl_mean


_compiled = {}


def _compiled_fn(name, fn):
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


TRAIN_BATCHES = [32, 256, 4096] if not ON_GPU else [32, 256, 4096, 65536]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", [pytest.param(b, id=f"B{b}" + ("-quick" if b == 256 else "")) for b in TRAIN_BATCHES])
def test_sample_and_kl_fwd_bwd(benchmark, batch, provider):
    mu, logvar = posterior(batch, 32)
    weight = torch.randn(batch, 32, device=DEVICE)
    fns = {"eager": _sample_and_kl_eager, "compile": _compiled_fn("sample_and_kl", _sample_and_kl_eager),
           "fastvae": lambda m, v, t, mode: F.sample_and_kl(m, v, 1, t, mode)}
    step = fns[provider]

    def fwd_bwd():
        z, loss, _ = step(mu, logvar, 3.0, "dim")
        return torch.autograd.grad((z * weight).sum() + loss, (mu, logvar))

    run(benchmark, "sample_and_kl", f"B={batch} D=32 mode=dim", provider, fwd_bwd, rounds=50 if batch <= 4096 else 20)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["dim", "kingma"])
def test_free_bits_kl_fwd_bwd(benchmark, mode, provider):
    mu, logvar = posterior(4096, 32)
    reference = backend.reference(F.OP_FREE_BITS_KL, DEVICE)
    fns = {"eager": lambda m, v: reference(m, v, 3.0, mode)[0],
           "compile": _compiled_fn(f"free_bits_{mode}", lambda m, v: reference(m, v, 3.0, mode)[0]),
           "fastvae": lambda m, v: F.free_bits_kl(m, v, 3.0, mode)}
    fn = fns[provider]
    run(benchmark, "free_bits_kl", f"B=4096 D=32 mode={mode}", provider,
        lambda: torch.autograd.grad(fn(mu, logvar), (mu, logvar)), rounds=50)


# ---------------------------------------------------------------- importance-weighted NLL terms
def _iw_terms_eager(z, mu, logvar):
    log_prob = backend.reference(F.OP_GAUSSIAN_LOG_PROB, DEVICE)
    return log_prob(z, None, None) - log_prob(z, mu, logvar)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("samples", [pytest.param(500, id="K500-quick")])
def test_iw_log_prob_terms(benchmark, samples, provider):
    mu, logvar = posterior(32, 32, grad=False)
    z = F.reparameterize(mu, logvar, samples)
    fns = {"eager": _iw_terms_eager, "compile": _compiled_fn("iw_terms", _iw_terms_eager),
           "fastvae": lambda a, m, v: F.standard_normal_log_prob(a) - F.gaussian_log_prob(a, m, v)}
    fn = fns[provider]
    with torch.no_grad():
        run(benchmark, "gaussian_log_prob", f"B=32 K={samples} D=32 (log p(z) - log q(z|x))", provider,
            lambda: fn(z, mu, logvar), rounds=50)


# ---------------------------------------------------------------- mutual information
def mi_materialised(z, mu, logvar):
    """The textbook estimator (as in the reference code): an N x N x D tensor."""
    diff = z.unsqueeze(1) - mu.unsqueeze(0)
    log_density = (-0.5 * (mu.shape[1] * LOG_2PI + logvar.sum(-1))).unsqueeze(0) - 0.5 * (
        diff * diff * torch.exp(-logvar).unsqueeze(0)).sum(-1)
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(mu.shape[0])
    neg_entropy = -0.5 * mu.shape[1] * LOG_2PI - 0.5 * (1 + logvar).sum(-1)
    return (neg_entropy - log_qz).mean()


# the materialised estimator only where N x N x D fits comfortably (fp32: N=2000 -> 512 MB; 10k -> 12.8 GB)
MI_SIZES = [1000, 10000, 100000] if ON_GPU else [1000, 2000, 8000]
MATERIALISE_MAX = 10000 if ON_GPU else 2000


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}" + ("-quick" if n == MI_SIZES[-1] else "")) for n in MI_SIZES])
def test_mutual_information_whole_set(benchmark, n, provider):
    if provider != "fastvae" and n > MATERIALISE_MAX:
        pytest.skip(f"the materialised N x N x D estimator does not fit for N={n}")
    mu, logvar = posterior(n, 32, grad=False)
    z = F.reparameterize(mu, logvar)
    fns = {"eager": mi_materialised, "compile": _compiled_fn(f"mi{n}", mi_materialised),
           "fastvae": lambda a, m, v: F.mutual_information(m, v, a)}
    fn = fns[provider]
    rounds = 3 if n >= 8000 else 10
    with torch.no_grad():
        run(benchmark, "mutual_information", f"N={n} D=32 whole-set", provider, lambda: fn(z, mu, logvar), rounds)


@pytest.mark.parametrize("provider", ["eager", "fastvae"])
def test_mutual_information_per_batch(benchmark, provider):
    n = 3200
    mu, logvar = posterior(n, 32, grad=False)
    z = F.reparameterize(mu, logvar)

    def per_batch_loop():  # the reference code's loop over batches of 32
        return sum(mi_materialised(z[s:s + 32], mu[s:s + 32], logvar[s:s + 32]) * min(32, n - s)
                   for s in range(0, n, 32)) / n

    fn = per_batch_loop if provider == "eager" else (lambda: F.mutual_information(mu, logvar, z, batch_size=32))
    with torch.no_grad():
        run(benchmark, "mutual_information", f"N={n} D=32 per-batch(32)", provider, fn, rounds=10)


# ---------------------------------------------------------------- summary table
def summarize(json_path: str) -> str:
    """Markdown table (median ms, peak MiB, ratio to eager) of a --benchmark-json file of this suite."""
    import json

    with open(json_path) as handle:
        data = json.load(handle)
    groups = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        groups.setdefault(bench["group"], {})[info["provider"]] = (bench["stats"]["median"] * 1e3,
                                                                  info["peak_memory_bytes"] / 2**20, info["device"])
    lines = ["| op, shape | provider | median ms | x eager (time) | peak MiB |", "|---|---|---:|---:|---:|"]
    for group, providers in groups.items():
        eager = providers.get("eager", (None,))[0]
        for provider in PROVIDERS:
            if provider not in providers:
                continue
            ms, mib, _ = providers[provider]
            ratio = f"{eager / ms:.2f}" if eager else "-"
            lines.append(f"| {group} | {provider} | {ms:.3f} | {ratio} | {mib:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summarize(sys.argv[1]))
