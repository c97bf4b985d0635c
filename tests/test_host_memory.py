"""fastvae.host_memory: on glibc, once a CPU Trainer or evaluation ran, blocks up to 32 MiB come from the heap, so
freed megabytes stay in the process; FASTVAE_KEEP_FREED_MEMORY=0 leaves malloc alone."""
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc malloc settings")

# a 16 MiB block: above glibc's initial mmap threshold (128 KiB), below the raised one (32 MiB). With the setting
# it comes from the heap (so freeing it keeps its pages in the process), without it from its own mapping, which
# free() hands back to the kernel. Where the block lies is deterministic; the page faults a training step then
# saves are not (glibc adapts its thresholds as it goes: measured 0-2,000 faults per ptb step without the
# setting, 0-50 with it; benchmarks/results/issue14-host-memory-dropout-amd-epyc.md).
PROBE = """
import sys
import torch
from fastvae import host_memory, info
said = host_memory.keep_freed_memory() if sys.argv[1] == "apply" else info.collect()["host_memory"]
block = torch.empty(4 << 20)
in_heap = False
with open("/proc/self/maps") as maps:
    for line in maps:
        if line.rstrip().endswith("[heap]"):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            in_heap = low <= block.data_ptr() < high
print(said)
print(in_heap)
"""


def _probe(mode="apply", **env):
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    said, in_heap = proc.stdout.strip().split("\n")[-2:]
    return said, in_heap == "True"


@glibc
def test_large_blocks_come_from_the_heap_and_the_switch_turns_it_off():
    said_on, in_heap_on = _probe()
    said_off, in_heap_off = _probe(FASTVAE_KEEP_FREED_MEMORY="0")
    assert said_on.startswith("on:") and in_heap_on
    assert said_off.startswith("off") and not in_heap_off


@glibc
def test_info_reports_the_setting_without_applying_it():
    said, in_heap = _probe("report")
    assert said.startswith("applied by CPU training and evaluation:") and not in_heap


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
