"""Which compute precision a run uses: `fp32`, `bf16`, or `auto` (decided from the hardware at run time).

`auto` picks bf16 where the hardware multiplies bfloat16 natively: a CPU with AMX (amx_bf16) or AVX512-BF16
(avx512_bf16), a CUDA GPU that supports bf16; fp32 elsewhere (emulated bf16 GEMMs are slower than fp32).
`python -m fastvae.info` reports what this machine has and what `auto` picks.
"""
from __future__ import annotations

import functools
import platform

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def cpuinfo_field(key: str) -> str | None:
    """The first CPU's `key` line of Linux's /proc/cpuinfo (`flags`, `model name`, `vendor_id`...), or None (another
    system, or no such line)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's bf16 matrix instructions among amx_bf16 and avx512_bf16 (Linux /proc/cpuinfo flags; other
    systems report none, so `auto` stays fp32 there)."""
    flags = set((cpuinfo_field("flags") or "").split())
    return tuple(f for f in ("amx_bf16", "avx512_bf16") if f in flags)


def cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def resolve(precision: str, device: torch.device | str) -> str:
    """`fp32` or `bf16` for `precision` on `device` (`auto` decided from the hardware)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_features() else "fp32"
    return "fp32"


def report() -> dict:
    """What `fastvae.info` prints about precision."""
    out: dict[str, object] = {"cpu": cpu_name(), "cpu_bf16_instructions": list(cpu_bf16_features()),
           "auto_on_cpu": resolve("auto", "cpu")}
    if torch.cuda.is_available():
        out["gpu_bf16"] = bool(torch.cuda.is_bf16_supported())
        out["auto_on_cuda"] = resolve("auto", "cuda")
    return out
