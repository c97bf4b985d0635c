"""LSTM decoder core: fastvae vs torch.nn.LSTM (oneDNN on CPU, cuDNN on GPU) vs a Python nn.LSTMCell loop.

Run:  pytest benchmarks/bench_decoder.py --benchmark-only --benchmark-json benchmarks/results/cpu-decoder.json
      python benchmarks/bench_decoder.py summarize benchmarks/results/cpu-decoder.json \
          > benchmarks/results/cpu-decoder.md

Workloads (all the decoder of recipes.md: z concatenated to every input, c0 from z; the output layer is left
out because it is the same GEMM for every provider and would only dilute the ratios):
  train   forward + backward of a teacher-forced batch (input projections, recurrence, all gradients)
  iw      teacher-forced forward without gradients with K posterior samples per sentence (IW evaluation;
          fastvae projects the words once per sentence, the others see B*K independent rows)
  decode  step-by-step decoding without gradients (one step per call of the step op; generation, beam search)
Sizes: ptb (emb 256, hidden 256), yahoo (emb 512, hidden 1024), nz 32, B = 32, T = 30 steps.
K (samples per sentence) defaults to 50 for ptb and 10 for yahoo on a CPU (K = 500 takes minutes per round on
2 cores); FASTVAE_BENCH_K=500 sets it for both (the GPU default is 500). FASTVAE_BENCH_THREADS=N sets torch's
thread count (the default is torch's: one per core).
"""
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from fastvae import backend
from fastvae.ops import lstm_sequence, lstm_step

if os.environ.get("FASTVAE_BENCH_THREADS"):  # e.g. 1: immune to OpenMP barrier stalls on a shared machine
    torch.set_num_threads(int(os.environ["FASTVAE_BENCH_THREADS"]))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DEVICE_NAME = torch.cuda.get_device_name() if ON_GPU else f"cpu ({torch.get_num_threads()} threads)"
SIZES = {"ptb": (256, 256), "yahoo": (512, 1024)}
NZ, B, T = 32, 32, 30
K_ENV = os.environ.get("FASTVAE_BENCH_K")
K_SAMPLES = {name: int(K_ENV) if K_ENV else (500 if ON_GPU else {"ptb": 50, "yahoo": 10}[name]) for name in SIZES}
PROVIDERS = ["fastvae", "nn.LSTM", "LSTMCell loop"]


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


class Model:
    """One set of decoder-LSTM weights, usable by every provider."""

    def __init__(self, emb, hidden, grad):
        self.lstm = torch.nn.LSTM(emb + NZ, hidden, batch_first=True).to(DEVICE)
        self.cell = torch.nn.LSTMCell(emb + NZ, hidden).to(DEVICE)
        self.cell.load_state_dict({"weight_ih": self.lstm.weight_ih_l0, "weight_hh": self.lstm.weight_hh_l0,
                                   "bias_ih": self.lstm.bias_ih_l0, "bias_hh": self.lstm.bias_hh_l0})
        self.to_cell = torch.nn.Linear(NZ, hidden, bias=False).to(DEVICE)
        self.emb, self.hidden = emb, hidden
        for p in list(self.lstm.parameters()) + list(self.cell.parameters()) + list(self.to_cell.parameters()):
            p.requires_grad_(grad)

    # -------- teacher forced: words [B, T, E], z [B, K, nz] -> h [B*K, T, H]
    def fastvae(self, words, z):
        w = self.lstm.weight_ih_l0
        input_gates = F.linear(words, w[:, : self.emb], self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0)
        sample_gates = F.linear(z, w[:, self.emb:])
        c0 = self.to_cell(z)
        return lstm_sequence(input_gates, sample_gates, c0.tanh(), c0, self.lstm.weight_hh_l0)[0]

    def nn_lstm(self, words, z):
        Bz, K, _ = z.shape
        rows = words.repeat_interleave(K, 0) if K > 1 else words
        zf = z.reshape(Bz * K, NZ)
        x = torch.cat([rows, zf[:, None].expand(-1, words.shape[1], -1)], -1)
        c0 = self.to_cell(zf)[None]
        return self.lstm(x, (c0.tanh(), c0))[0]

    def cell_loop(self, words, z):
        Bz, K, _ = z.shape
        rows = words.repeat_interleave(K, 0) if K > 1 else words
        zf = z.reshape(Bz * K, NZ)
        c = self.to_cell(zf)
        h = c.tanh()
        outs = []
        for t in range(words.shape[1]):
            h, c = self.cell(torch.cat([rows[:, t], zf], -1), (h, c))
            outs.append(h)
        return torch.stack(outs, 1)

    # -------- step by step: a stepper per provider, state for N rows
    def stepper(self, provider, z):
        zf = z.reshape(-1, NZ)
        c = self.to_cell(zf)
        state = {"h": c.tanh(), "c": c}
        w = self.lstm.weight_ih_l0
        if provider == "fastvae":
            sample_gates = F.linear(zf, w[:, self.emb:], self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0)
            word_weight_t = w[:, : self.emb].t()

            def step(x):
                gates = torch.addmm(sample_gates, x, word_weight_t)
                state["h"], state["c"] = lstm_step(gates, state["h"], state["c"], self.lstm.weight_hh_l0)
        elif provider == "nn.LSTM":
            hc = (state["h"][None], state["c"][None])

            def step(x):
                nonlocal hc
                _, hc = self.lstm(torch.cat([x, zf], -1)[:, None], hc)
        else:
            def step(x):
                state["h"], state["c"] = self.cell(torch.cat([x, zf], -1), (state["h"], state["c"]))
        return step


def run(benchmark, group, shape, provider, fn, rounds):
    fn()  # warm-up
    _sync()
    benchmark.group = group
    benchmark.extra_info.update(provider=provider, shape=shape, device=DEVICE_NAME,
                                backend=backend.select("lstm_sequence", DEVICE) if provider == "fastvae" else "torch",
                                load_average=os.getloadavg()[0])

    def call():
        fn()
        _sync()

    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_train_forward_backward(benchmark, size, provider):
    emb, hidden = SIZES[size]
    model = Model(emb, hidden, grad=True)
    words = torch.randn(B, T, emb, device=DEVICE, requires_grad=True)
    z = torch.randn(B, 1, NZ, device=DEVICE, requires_grad=True)
    upstream = torch.randn(B, T, hidden, device=DEVICE)
    forward = {"fastvae": lambda: model.fastvae(words, z).reshape(B, T, hidden),
               "nn.LSTM": lambda: model.nn_lstm(words, z), "LSTMCell loop": lambda: model.cell_loop(words, z)}[provider]

    def fn():
        (forward() * upstream).sum().backward()

    run(benchmark, f"train fwd+bwd {size} B={B} T={T}", f"B={B},T={T},E={emb},H={hidden}", provider, fn, rounds=5)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_iw_forward_k_samples(benchmark, size, provider):
    emb, hidden = SIZES[size]
    K = K_SAMPLES[size]
    model = Model(emb, hidden, grad=False)
    words = torch.randn(B, T, emb, device=DEVICE)
    z = torch.randn(B, K, NZ, device=DEVICE)
    forward = {"fastvae": model.fastvae, "nn.LSTM": model.nn_lstm, "LSTMCell loop": model.cell_loop}[provider]

    def fn():
        with torch.no_grad():
            forward(words, z)

    run(benchmark, f"iw forward {size} B={B}xK={K} T={T}", f"B={B},K={K},T={T},E={emb},H={hidden}", provider, fn,
        rounds=3)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rows", ["B", "BxK"])
@pytest.mark.parametrize("size", list(SIZES))
def test_decode_step_by_step(benchmark, size, rows, provider):
    emb, hidden = SIZES[size]
    K = 1 if rows == "B" else K_SAMPLES[size]
    model = Model(emb, hidden, grad=False)
    z = torch.randn(B, K, NZ, device=DEVICE)
    tokens = torch.randn(T, B * K, emb, device=DEVICE)

    def fn():
        with torch.no_grad():
            step = model.stepper(provider, z)
            for t in range(T):
                step(tokens[t])

    label = f"B={B}" if K == 1 else f"B={B}xK={K}"
    run(benchmark, f"decode {T} steps {size} {label}", f"N={B * K},T={T},E={emb},H={hidden}", provider, fn,
        rounds=5 if K == 1 else 3)


# ---------------------------------------------------------------- markdown summary of a results file
def summarize(path):
    with open(path) as handle:
        data = json.load(handle)
    groups = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["provider"]] = bench
    machine = data.get("machine_info", {})
    lines = ["# Decoder benchmarks (`benchmarks/bench_decoder.py`)", "",
             f"Hardware: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{next(iter(data['benchmarks']))['extra_info']['device']}; torch {torch.__version__}; "
             f"{data.get('datetime', '')}.", "",
             "Times are the best round / median round in ms (the machine is shared: the best round is the least "
             "disturbed). Ratios = other provider's time / fastvae's time (> 1: fastvae faster), from best rounds.",
             "", "| workload | fastvae | nn.LSTM | LSTMCell loop | vs nn.LSTM | vs LSTMCell | load avg |",
             "|---|---|---|---|---|---|---|"]
    for group, by_provider in groups.items():
        cells, best = [], {}
        for provider in PROVIDERS:
            bench = by_provider.get(provider)
            if bench is None:
                cells.append("n/a")
                continue
            best[provider] = bench["stats"]["min"]
            cells.append(f"{bench['stats']['min'] * 1e3:.1f} / {bench['stats']['median'] * 1e3:.1f}")
        ratios = [f"{best[p] / best['fastvae']:.2f}x" if p in best and "fastvae" in best else "n/a"
                  for p in ("nn.LSTM", "LSTMCell loop")]
        load = max(b["extra_info"].get("load_average", 0.0) for b in by_provider.values())
        lines.append(f"| {group} | " + " | ".join(cells + ratios) + f" | {load:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        sys.stdout.write(summarize(sys.argv[2]))
    else:
        sys.exit("usage: python benchmarks/bench_decoder.py summarize RESULTS.json")
