"""IW-NLL evaluation throughput (sentences/s at K=500): fastvae batched vs the reference way.

Run:  pytest benchmarks/bench_iw_nll.py --benchmark-only --benchmark-json benchmarks/results/cpu-iw_nll.json
      (`-k quick`: the ptb size only). Or `python benchmarks/run_all.py [--quick]`.

Providers, per model size (ptb 256/256, yahoo 512/1024; nz 32), on N test sentences of 10 words + </s>
(vocabulary 6,300, the benchmark text of bench_training.py):
- `baseline`: `vae_baseline.ReferenceVAE.iw_nll_one`: one sentence at a time, 500 samples in 5 chunks of
  100 (the encoder re-run per chunk), nn.LSTM decoder over the sentence repeated per sample, a `.item()`
  per sentence: the reference code's `nll_iw` / `calc_iwnll`.
- `fastvae`: `fastvae.evaluation.iw_nll(model, dataset, K=500)`, batched across sentences and samples.
extra_info: provider/shape/device, items_per_round (sentences), flops_per_round (floor.py's IW model) and
the mean -log p(x) each provider computed (the two models have their own random weights, so the values
differ; each must be finite and near the uniform-model value (T * log V) at this initialisation).
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import MODEL_SIZES, Workload  # noqa: E402
from vae_baseline import ReferenceVAE, synthetic_sentences, with_markers, write_corpus_files  # noqa: E402

# fastvae's trainer and evaluation keep freed CPU memory in the process (fastvae.host_memory, process-wide),
# so whichever provider ran first would decide the allocator of the others: apply it here, before any, and
# every provider (the baseline too) runs under the same allocator settings
from fastvae.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DEVICE_NAME = torch.cuda.get_device_name() if ON_GPU else f"cpu ({torch.get_num_threads()} threads)"
SAMPLES = 500
WORDS = 10
VOCAB = 6300
# sentences per round (the reference costs ~0.26 s per ptb-size sentence on a 2-core CPU)
SENTENCES = {"ptb": 8, "yahoo": 2} if not ON_GPU else {"ptb": 256, "yahoo": 128}
ROUNDS = {"ptb": 2, "yahoo": 2} if not ON_GPU else {"ptb": 5, "yahoo": 3}
PROVIDERS = ["baseline", "fastvae", "fastvae-bf16"]  # bf16: GEMMs on bf16 weight copies (native bf16 only)
PRECISION = {"fastvae": "fp32", "fastvae-bf16": "bf16"}


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=4)
def bench_text(num_eval: int):
    """(test word ids [num_eval, WORDS], corpus directory) with a training split covering the vocabulary."""
    gen = torch.Generator().manual_seed(4321)
    num_train = 700  # enough rows to hold every word id once
    ids = synthetic_sentences(num_train + 2 * num_eval, WORDS, VOCAB, gen)
    directory = tempfile.mkdtemp(prefix="fastvae-bench-iw-")
    write_corpus_files(ids, directory, valid=num_eval, test=num_eval)
    return ids[-num_eval:], directory


def baseline_evaluator(config: str, num: int):
    sizes = MODEL_SIZES[config]
    ids, _ = bench_text(num)
    tokens = with_markers(ids).to(DEVICE)
    model = ReferenceVAE(VOCAB, sizes["emb"], sizes["hidden"], sizes["latent"]).to(DEVICE).eval()

    def run():
        total = 0.0
        for i in range(tokens.shape[0]):
            total += model.iw_nll_one(tokens[i:i + 1], SAMPLES, 100).sum().item()
        return total / tokens.shape[0]

    return run


def fastvae_evaluator(config: str, num: int, precision: str = "fp32"):
    from fastvae.data import load_corpus
    from fastvae.evaluation import iw_nll
    from fastvae.models import TextVAE, get_config

    corpus = load_corpus(bench_text(num)[1])
    if len(corpus.vocab) != VOCAB:
        raise RuntimeError(f"benchmark corpus vocabulary is {len(corpus.vocab)}, expected {VOCAB}")
    model = TextVAE(len(corpus.vocab), get_config(config)).to(DEVICE).eval()
    if precision == "bf16":
        model.set_compute_dtype(torch.bfloat16)
    kwargs = {}
    params = inspect.signature(iw_nll).parameters
    if "device" in params:
        kwargs["device"] = DEVICE

    def run():
        with torch.no_grad():
            values = iw_nll(model, corpus.test, K=SAMPLES, **kwargs)
        return float(values.mean())

    return run


EVALUATORS = {"baseline": baseline_evaluator, "fastvae": fastvae_evaluator,
              "fastvae-bf16": lambda config, num: fastvae_evaluator(config, num, "bf16")}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config", [pytest.param("ptb", id="ptb-quick"), pytest.param("yahoo", id="yahoo")])
def test_iw_nll_throughput(benchmark, config, provider):
    from fastvae.precision import resolve

    if PRECISION.get(provider) == "bf16" and resolve("auto", DEVICE) != "bf16":
        pytest.skip("no native bf16 matrix instructions here (fastvae.precision): bf16 would be emulated")
    num = SENTENCES[config]
    run = EVALUATORS[provider](config, num)
    work = Workload.from_config(config, VOCAB)
    shape = f"{config} N={num} K={SAMPLES} T={WORDS + 1} V={VOCAB}"
    benchmark.group = f"iw_nll {shape}"
    benchmark.extra_info.update(provider=provider, shape=shape, device=DEVICE_NAME, suite="iw_nll", config=config,
                                item="sentences", items_per_round=num,
                                flops_per_round=num * work.iw_flops_per_sentence(WORDS + 1, SAMPLES),
                                precision=PRECISION.get(provider, "fp32"))
    values = []

    def round_():
        values.append(run())
        _sync()

    benchmark.pedantic(round_, rounds=ROUNDS[config], iterations=1, warmup_rounds=0)
    mean_nll = sum(values) / len(values)
    benchmark.extra_info["mean_nll"] = mean_nll
    # a sanity check of the work done, not a timing assertion: the value must be a real NLL
    assert mean_nll == mean_nll and 0 < mean_nll < 10 * (WORDS + 1) * torch.log(torch.tensor(float(VOCAB))).item()
