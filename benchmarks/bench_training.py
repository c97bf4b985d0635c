"""End-to-end training throughput (tokens/s) per recipe, fastvae vs the reference way, side by side.

Run:  pytest benchmarks/bench_training.py --benchmark-only --benchmark-json benchmarks/results/cpu-training.json
      (`-k quick`: the ptb size only). Or `python benchmarks/run_all.py [--quick]` for every suite.

Providers, per model size (ptb 256/256, yahoo 512/1024; nz 32, batch 32) and recipe:
- `baseline`: `vae_baseline.ReferenceTrainer`, a small copy of the reference code's loop (nn.LSTM
  model, eager losses, a `.item()` per step, full forward + backward for every aggressive sub-step).
- `fastvae`: `fastvae.Trainer`'s own step for the recipe (its policy's `step` on the trainer), the model
  built from the config by the trainer, batches from `fastvae.data`.
Text: Zipf-distributed synthetic sentences of 10 words (+ </s>), vocabulary 6,300 (the size of the Yelp
set the issue's reference figures were measured on), batches of identical length as the reference.
One round = `steps` outer training steps (the host syncs once per round on a GPU). The aggressive
recipe runs a fixed 15 encoder sub-steps + 1 decoder step per outer step (one stop-rule window, so
both providers do the same work); its tokens are counted per forward pass (16 per outer step).
`aggressive-substeps` times the 15 encoder sub-steps alone (fastvae: the policy's `encoder_inner_loop`,
decoder weights frozen so backward skips their gradients; baseline: full forward + backward each).
extra_info carries provider/shape/device plus items_per_round and flops_per_round (the workload's
GEMM FLOPs, floor.py's model) from which run_all.py derives tokens/s and the fraction of the floor.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import MODEL_SIZES, Workload  # noqa: E402
from vae_baseline import (ReferenceLM, ReferenceTrainer, ReferenceVAE, synthetic_sentences, with_markers,  # noqa: E402
                          write_corpus_files)

# fastvae's trainer and evaluation keep freed CPU memory in the process (fastvae.host_memory, process-wide),
# so whichever provider ran first would decide the allocator of the others: apply it here, before any, and
# every provider (the baseline too) runs under the same allocator settings
from fastvae.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DEVICE_NAME = torch.cuda.get_device_name() if ON_GPU else f"cpu ({torch.get_num_threads()} threads)"
BATCH = 32
WORDS = 10
VOCAB = 6300
SUBSTEPS = 15  # aggressive encoder sub-steps per outer step (one stop-rule window)
RECIPES = ["lm", "vae", "beta", "cyclical", "aggressive", "pretrain-fb"]
# the aggressive encoder sub-steps alone (issue 5's per-sub-step target): SUBSTEPS encoder-only steps per round
SUBSTEP_WORKLOAD = "aggressive-substeps"
CONFIGS = ["ptb", "yahoo"]
# fastvae-bf16: --precision bf16 (bf16 GEMMs on cached weight copies), only where the hardware multiplies bf16
# natively (fastvae.precision's `auto` rule: emulated bf16 is slower than fp32 and says nothing)
PROVIDERS = ["baseline", "fastvae", "fastvae-bf16"]
PRECISION = {"fastvae": "fp32", "fastvae-bf16": "bf16"}
# outer steps per round and rounds, per size (CPU figures are slow; a GPU gets more of both)
STEPS = {"ptb": 5, "yahoo": 2} if not ON_GPU else {"ptb": 20, "yahoo": 20}
ROUNDS = {"ptb": 10, "yahoo": 2} if not ON_GPU else {"ptb": 10, "yahoo": 10}
NUM_TRAIN = 40 * BATCH  # training sentences (the aggressive sub-steps draw random batches from them)


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=1)
def bench_text():
    """(word ids [N, WORDS], directory with train/valid/test.txt of the same sentences)."""
    gen = torch.Generator().manual_seed(1234)
    ids = synthetic_sentences(NUM_TRAIN + 2 * BATCH, WORDS, VOCAB, gen)
    directory = tempfile.mkdtemp(prefix="fastvae-bench-")
    write_corpus_files(ids, directory, valid=BATCH, test=BATCH)
    return ids, directory


@functools.lru_cache(maxsize=1)
def bench_corpus():
    from fastvae.data import load_corpus

    return load_corpus(bench_text()[1])


def flops_per_outer_step(config: str, recipe: str) -> tuple[int, int]:
    """(target tokens processed, GEMM FLOPs of the workload) of one outer step."""
    work = Workload.from_config(config, VOCAB)
    tokens = BATCH * (WORDS + 1)
    if recipe == "lm":
        return tokens, tokens * work.train_flops_per_token(vae=False)
    if recipe == "aggressive":
        flops = tokens * (SUBSTEPS * work.encoder_substep_flops_per_token() + work.train_flops_per_token())
        return tokens * (SUBSTEPS + 1), flops
    if recipe == SUBSTEP_WORKLOAD:
        return tokens * SUBSTEPS, tokens * SUBSTEPS * work.encoder_substep_flops_per_token()
    return tokens, tokens * work.train_flops_per_token()


# ----------------------------------------------------------------------------- the two providers
def baseline_stepper(config: str, recipe: str):
    sizes = MODEL_SIZES[config]
    ids, _ = bench_text()
    batches = [with_markers(ids[i:i + BATCH]).to(DEVICE) for i in range(0, NUM_TRAIN, BATCH)]
    if recipe == "lm":
        model = ReferenceLM(VOCAB, sizes["emb"], sizes["hidden"]).to(DEVICE).train()
    else:
        model = ReferenceVAE(VOCAB, sizes["emb"], sizes["hidden"], sizes["latent"]).to(DEVICE).train()
    trainer = ReferenceTrainer(model, lr=0.5 if recipe == "pretrain-fb" else 1.0)
    gen = torch.Generator().manual_seed(0)
    state = {"position": 0, "step": 0}
    per_epoch = len(batches)

    def kl_weight():
        if recipe == "beta":
            return 0.4
        if recipe == "cyclical":  # Fu et al.'s paper form over 4 cycles of the benchmark's steps
            period = max(per_epoch, 1)
            return min(1.0, (state["step"] % period) / (period * 0.5))
        if recipe in ("aggressive", SUBSTEP_WORKLOAD, "pretrain-fb"):
            return min(1.0, (0.0 if recipe == "pretrain-fb" else 0.1) + state["step"] / (10 * per_epoch))
        return 1.0

    def step():
        tokens = batches[state["position"] % per_epoch]
        if recipe == "lm":
            trainer.lm_step(tokens)
        elif recipe == SUBSTEP_WORKLOAD:
            picks = torch.randint(per_epoch, (SUBSTEPS - 1,), generator=gen).tolist()
            trainer.encoder_substeps(tokens, kl_weight(), [batches[i] for i in picks], window=SUBSTEPS)
        elif recipe == "aggressive":
            picks = torch.randint(per_epoch, (SUBSTEPS - 1,), generator=gen).tolist()
            trainer.aggressive_step(tokens, kl_weight(), [batches[i] for i in picks], window=SUBSTEPS)
        elif recipe == "pretrain-fb":
            trainer.joint_step(tokens, kl_weight(), fb_target=8.0)
        else:
            trainer.joint_step(tokens, kl_weight())
        state["position"] += 1
        state["step"] += 1

    return step


def fastvae_stepper(config: str, recipe: str, precision: str = "fp32"):
    """The recipe's step exactly as fastvae.Trainer runs it inside an epoch (its policy on the trainer)."""
    from fastvae.training import Trainer

    substeps_only = recipe == SUBSTEP_WORKLOAD
    recipe = "aggressive" if substeps_only else recipe
    options = {"max_inner_steps": SUBSTEPS, "inner_window": SUBSTEPS} if recipe == "aggressive" else {}
    trainer = Trainer(None, bench_corpus(), recipe=recipe, config=config, epochs=10, device=DEVICE, out_dir=None,
                      iw_samples=0, progress=False, verbose=False, batch_size=BATCH, precision=precision, **options)
    if recipe == "pretrain-fb":  # time the free-bits phase (the pretraining phase is a plain VAE step at beta 0)
        trainer.phase_index = 1
    return policy_stepper(trainer, substeps_only)


def policy_stepper(trainer, substeps_only: bool = False):
    """One step of `trainer`'s current phase as fit() runs it inside an epoch (its policy on the trainer), or with
    `substeps_only` the aggressive policy's encoder-only inner loop alone."""
    trainer._start_phase(True)  # optimisers, the epoch's batches, the schedule bound to them
    phase = trainer.phase
    batches = trainer._batches
    trainer.model.train()
    sums = torch.zeros((), device=trainer.device)

    def step():
        nonlocal sums
        batch = batches[trainer.position % len(batches)].to(trainer.device)
        if substeps_only:  # the policy's own inner loop (encoder-only steps, the decoder frozen)
            phase.policy.encoder_inner_loop(trainer, batch, phase.schedule(trainer.step))
        else:
            stats = phase.policy.step(trainer, batch, phase.schedule(trainer.step))
            sums = sums + stats["loss_sum"]  # the trainer accumulates on the device too
        trainer.position += 1
        trainer.step += 1

    return step


STEPPERS = {"baseline": baseline_stepper, "fastvae": fastvae_stepper,
            "fastvae-bf16": functools.partial(fastvae_stepper, precision="bf16")}


def skip_unless_native_bf16(provider):
    from fastvae.precision import resolve

    if PRECISION.get(provider) == "bf16" and resolve("auto", DEVICE) != "bf16":
        pytest.skip("no native bf16 matrix instructions here (fastvae.precision): bf16 would be emulated")


def _param(config, recipe):
    quick = "-quick" if config == "ptb" else ""
    return pytest.param(config, recipe, id=f"{config}-{recipe}{quick}")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("config,recipe", [_param(c, r) for c in CONFIGS for r in RECIPES + [SUBSTEP_WORKLOAD]])
def test_training_throughput(benchmark, config, recipe, provider):
    skip_unless_native_bf16(provider)
    step = STEPPERS[provider](config, recipe)
    steps = 1 if recipe in ("aggressive", SUBSTEP_WORKLOAD) else STEPS[config]
    tokens, flops = flops_per_outer_step(config, recipe)
    shape = f"{config} B={BATCH} T={WORDS + 1} V={VOCAB}"
    if recipe in ("aggressive", SUBSTEP_WORKLOAD):
        shape += f" substeps={SUBSTEPS}"
    benchmark.group = f"train {recipe} {shape}"
    benchmark.extra_info.update(provider=provider, shape=shape, device=DEVICE_NAME, suite="training", config=config,
                                recipe=recipe, item="tokens", items_per_round=tokens * steps,
                                flops_per_round=flops * steps, steps_per_round=steps,
                                precision=PRECISION.get(provider, "fp32"))

    def round_():
        for _ in range(steps):
            step()
        _sync()

    benchmark.pedantic(round_, rounds=ROUNDS[config], iterations=1, warmup_rounds=1)
