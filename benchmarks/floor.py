"""FLOP floors: how fast a workload could possibly run on this machine's fp32 GEMM rate.

Every benchmark figure is read two ways: as a ratio to the plain-PyTorch baseline measured in the
same run, and as a fraction of the floor computed here (achieved speed / the speed at which the
workload's matrix FLOPs would take exactly as long as this machine's best measured fp32 GEMM).
Only GEMM FLOPs count (LSTM gates, output layer, their backward); pointwise work, the embedding
look-ups and the softmax are left out, so the floor is an upper bound that nothing reaches.

    python benchmarks/floor.py            # measure the GEMM rate and print the floors of every workload
    python benchmarks/floor.py --json     # the same as one JSON object

FLOP model of the LSTM text VAE of recipes.md (per target token; E emb, H hidden, nz latent, V vocab;
a multiply-add is 2 FLOPs):
  encoder LSTM            2 * 4H * (E + H)            (per input token)
  decoder LSTM            2 * 4H * (E + nz + H)       (z concatenated to every input, as the reference)
  output layer            2 * H * V
A training step costs forward + backward = 3x the forward (backward: one GEMM for the input
gradient and one for the weight gradient of each forward GEMM). An aggressive encoder sub-step
needs only the path to z: the decoder's input gradients but none of its weight gradients.
IW-NLL with K samples of one sentence: the encoder once, and per sample and token the recurrent
GEMM and the output layer (the word part of the input projection is shared by the K samples, the
z part is projected once per sample).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch

# The model sizes of recipes.md (emb, hidden, nz); the benchmarks' text: ~10 words + </s>, V 6.3k
MODEL_SIZES = {
    "ptb": {"emb": 256, "hidden": 256, "latent": 32},
    "yelp": {"emb": 128, "hidden": 512, "latent": 32},
    "yahoo": {"emb": 512, "hidden": 1024, "latent": 32},
}
BENCH_VOCAB = 6300
BENCH_WORDS = 10  # words per sentence; target tokens per sentence = words + 1 (</s>)


@dataclass(frozen=True)
class Workload:
    """Sizes of one LSTM text-VAE workload."""

    emb: int
    hidden: int
    latent: int
    vocab: int
    enc_hidden: int | None = None  # None: same as hidden

    def __post_init__(self):
        for name in ("emb", "hidden", "latent", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Workload.{name} must be a positive int, got {value!r}")
        if self.enc_hidden is not None and (not isinstance(self.enc_hidden, int) or self.enc_hidden < 1):
            raise ValueError(f"Workload.enc_hidden must be a positive int or None, got {self.enc_hidden!r}")

    @classmethod
    def from_config(cls, name: str, vocab: int = BENCH_VOCAB) -> "Workload":
        if name not in MODEL_SIZES:
            raise ValueError(f"unknown model size {name!r}: expected one of {', '.join(MODEL_SIZES)}")
        s = MODEL_SIZES[name]
        return cls(s["emb"], s["hidden"], s["latent"], vocab)

    # forward FLOPs per token of each GEMM family
    @property
    def encoder_fwd(self) -> int:
        h = self.enc_hidden or self.hidden
        return 2 * 4 * h * (self.emb + h)

    @property
    def decoder_lstm_fwd(self) -> int:
        return 2 * 4 * self.hidden * (self.emb + self.latent + self.hidden)

    @property
    def output_fwd(self) -> int:
        return 2 * self.hidden * self.vocab

    def train_flops_per_token(self, *, vae: bool = True) -> int:
        """Forward + backward of one training step, per token (the LM has no encoder and no z)."""
        if not vae:
            lm_lstm = 2 * 4 * self.hidden * (self.emb + self.hidden)
            return 3 * (lm_lstm + self.output_fwd)
        return 3 * (self.encoder_fwd + self.decoder_lstm_fwd + self.output_fwd)

    def encoder_substep_flops_per_token(self) -> int:
        """An aggressive encoder sub-step: full forward, encoder backward, and only the decoder's
        input gradients (output layer dX, recurrent dh, the z part of the input projection)."""
        forward = self.encoder_fwd + self.decoder_lstm_fwd + self.output_fwd
        decoder_input_grads = self.output_fwd + 2 * 4 * self.hidden * (self.hidden + self.latent)
        return forward + decoder_input_grads + 2 * self.encoder_fwd

    def iw_flops_per_sentence(self, tokens: int, samples: int = 500) -> int:
        """IW-NLL of one sentence of `tokens` decoder positions with `samples` z samples."""
        if tokens < 1 or samples < 1:
            raise ValueError(f"tokens and samples must be >= 1, got {tokens} and {samples}")
        encoder = tokens * self.encoder_fwd
        shared_words = tokens * 2 * 4 * self.hidden * self.emb
        per_sample = tokens * (2 * 4 * self.hidden * self.hidden + self.output_fwd) \
            + 2 * 4 * self.hidden * self.latent + 2 * self.latent * self.hidden
        return encoder + shared_words + samples * per_sample


def floor_tokens_per_s(gflops: float, flops_per_token: float) -> float:
    """Tokens per second at which the GEMM FLOPs would run exactly at `gflops` GFLOP/s."""
    if gflops <= 0 or flops_per_token <= 0:
        raise ValueError(f"rate and FLOPs must be positive, got {gflops} GFLOP/s and {flops_per_token} FLOPs")
    return gflops * 1e9 / flops_per_token


def fraction_of_floor(achieved: float, floor: float) -> float:
    """achieved speed / floor speed (both in items per second): 1.0 would be the GEMM bound."""
    if floor <= 0:
        raise ValueError(f"the floor speed must be positive, got {floor}")
    return achieved / floor


# ----------------------------------------------------------------------------- measuring the rate
GEMM_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (352, 256, 6300), (512, 1024, 4096)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_gemm_gflops(device: str | torch.device = "cpu", shapes=None, repeats: int = 5,
                        min_time: float = 0.2, dtype: torch.dtype = torch.float32) -> dict:
    """Best GEMM rate over a few shapes (square and the workloads' own), medians of `repeats`, in `dtype`
    (float32; bfloat16 for the floor of the bf16 workloads). On the CPU in float32 each shape is also timed
    through oneDNN (where this torch's oneDNN takes float32), since fastvae's fused ops may multiply there
    (csrc/gemm.h): the floor is the faster library's.

    On a GPU TF32 stays off for this (fp32 means fp32: the floors are fp32 floors)."""
    device = torch.device(device)
    shapes = shapes or GEMM_SHAPES
    per_shape = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for m, k, n in shapes:
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            out = torch.empty(m, n, device=device, dtype=dtype)
            candidates = {"aten": lambda: torch.mm(a, b, out=out)}
            onednn = _onednn_fp32_product(a, b) if device.type == "cpu" and dtype == torch.float32 else None
            if onednn is not None:
                candidates["onednn"] = onednn
            for library, product in candidates.items():
                name = f"{m}x{k}x{n}" + ("" if library == "aten" else f" ({library})")
                per_shape[name] = _median_rate(product, 2.0 * m * k * n, device, repeats, min_time)
    finally:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    best = max(per_shape, key=per_shape.get)
    return {"gflops": per_shape[best], "best_shape": best, "per_shape": per_shape, "device": str(device),
            "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", "")}


def _median_rate(product, flops: float, device, repeats: int, min_time: float) -> float:
    product()
    _sync(device)
    # how many calls fill min_time
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < min_time / 4:
        product()
        calls += 1
    _sync(device)
    calls = max(1, int(calls * 4 * min_time / max(time.perf_counter() - start, 1e-9) / 4))
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            product()
        _sync(device)
        rates.append(flops * calls / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def _onednn_fp32_product(a: torch.Tensor, b: torch.Tensor):
    """a @ b through oneDNN's float32 matmul (torch.ops.mkldnn._linear_pointwise takes the weight as [n, k]),
    or None where this torch has no such op or its result differs from torch.mm's."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    weight = b.t().contiguous()
    try:
        if not torch.allclose(op(a, weight, None, "none", [], ""), a @ b, rtol=1e-3, atol=1e-3):
            return None
    except (RuntimeError, TypeError):
        return None
    return lambda: op(a, weight, None, "none", [], "")


def hardware_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_slug(name: str) -> str:
    """'AMD EPYC 7B13' -> 'amd-epyc-7b13'; the file name of benchmarks/results/<slug>.json."""
    slug = "".join(ch.lower() if ch.isalnum() else "-" for ch in name)
    while "--" in slug:
        slug = slug.replace("--", "-")
    slug = slug.strip("-")
    if not slug:
        raise ValueError(f"cannot make a file name from hardware name {name!r}")
    return slug


def floors(gflops: float, vocab: int = BENCH_VOCAB, words: int = BENCH_WORDS, samples: int = 500) -> dict:
    """Every workload's floor at `gflops`: training tokens/s per size (VAE, LM, aggressive sub-step) and
    IW-NLL sentences/s."""
    tokens = words + 1
    result = {}
    for name in MODEL_SIZES:
        w = Workload.from_config(name, vocab)
        iw_flops = w.iw_flops_per_sentence(tokens, samples)
        result[name] = {
            "train_vae_tokens_per_s": floor_tokens_per_s(gflops, w.train_flops_per_token()),
            "train_lm_tokens_per_s": floor_tokens_per_s(gflops, w.train_flops_per_token(vae=False)),
            "encoder_substep_tokens_per_s": floor_tokens_per_s(gflops, w.encoder_substep_flops_per_token()),
            "iw_nll_sentences_per_s": gflops * 1e9 / iw_flops,
            "flops": {"train_vae_per_token": w.train_flops_per_token(),
                      "train_lm_per_token": w.train_flops_per_token(vae=False),
                      "encoder_substep_per_token": w.encoder_substep_flops_per_token(),
                      "iw_nll_per_sentence": iw_flops},
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rate = measure_gemm_gflops(args.device)
    result = {"hardware": hardware_name(args.device), "gemm": rate, "floors": floors(rate["gflops"])}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['hardware']}: fp32 GEMM {rate['gflops']:.1f} GFLOP/s (best shape {rate['best_shape']}, "
          f"{rate['threads']} threads)")
    for name, f in result["floors"].items():
        print(f"  {name:6s} train VAE {f['train_vae_tokens_per_s']:9,.0f} tok/s | LM {f['train_lm_tokens_per_s']:9,.0f}"
              f" tok/s | encoder sub-step {f['encoder_substep_tokens_per_s']:9,.0f} tok/s | IW-NLL K=500 "
              f"{f['iw_nll_sentences_per_s']:7.2f} sent/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
