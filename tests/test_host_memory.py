"""fastvae.host_memory: on glibc, once a CPU Trainer or evaluation ran, freed megabytes stay in the process
(a block freed and allocated again costs no page faults); FASTVAE_KEEP_FREED_MEMORY=0 leaves malloc alone."""
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc malloc settings")

# eleven ptb-size training steps (vocabulary 6,300: the output layer's megabytes are what glibc would unmap), the
# page faults of the last five together; the trainer applies the setting itself
PROBE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import bench_training as bt
from fastvae import host_memory
step = bt.fastvae_stepper("ptb", "vae")
print(host_memory.keep_freed_memory())
for _ in range(6):
    step()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults))
"""
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _probe(**env):
    proc = subprocess.run([sys.executable, "-c", PROBE, BENCHMARKS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    said, faults = proc.stdout.strip().split("\n")[-2:]
    return said, int(faults)


@glibc
def test_a_training_step_reuses_freed_memory_and_the_switch_turns_it_off():
    said_on, faults_on = _probe()
    said_off, _ = _probe(FASTVAE_KEEP_FREED_MEMORY="0")
    assert said_on.startswith("on:") and said_off.startswith("off")
    # measured: 0-50 page faults per step kept, against 1,200-2,000 per step on average with glibc's own settings
    # (which vary from step to step as glibc adapts its thresholds, so only the kept side gets a bound: a step
    # allocates ~20 MiB, 5,000 pages, and must not fault them in again)
    assert faults_on < 5 * 200, faults_on


def test_the_trainer_and_evaluation_apply_it(monkeypatch):
    from fastvae import host_memory
    from fastvae.data.builtin import grammar_corpus
    from fastvae.training import Trainer

    calls = []
    monkeypatch.setattr("fastvae.training.trainer.keep_freed_memory", lambda: calls.append("trainer"))
    monkeypatch.setattr("fastvae.evaluation.metrics.keep_freed_memory", lambda: calls.append("evaluation"))
    corpus = grammar_corpus(seed=1, n_train=64, n_valid=16, n_test=16)
    Trainer(None, corpus, recipe="vae", config="tiny", epochs=1, iw_samples=2, progress=False, verbose=False).fit()
    assert calls[0] == "trainer" and "evaluation" in calls
    assert callable(host_memory.keep_freed_memory)
