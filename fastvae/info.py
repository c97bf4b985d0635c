"""`python -m fastvae.info`: what this installation contains and which backend each op uses."""
from __future__ import annotations

import importlib
import json
import sys

import torch

from . import __version__, backend, host_memory, precision

# Modules that register ops with fastvae.backend; imported so the report lists every op.
OP_MODULES = ("fastvae.ops", "fastvae.functional", "fastvae.nn")


def build_info() -> dict:
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)


def _cpu_fp32_gemm(core):
    getter = getattr(core, "cpu_fp32_gemm_backend", None)
    if getter is None:
        return None
    try:
        return getter()
    except RuntimeError as exc:  # FASTVAE_CPU_FP32_GEMM names no backend
        return f"error: {exc}"


def collect() -> dict:
    for name in OP_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a layer that is not built yet has no ops to report
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    core = backend.compiled_core()
    devices = []
    if core is not None:
        devices.append("CPU")
        if core.built_with_cuda:
            devices.append("CUDA")
    if backend.triton_too_old():
        triton_mode = f"not used: {backend.triton_too_old()}"
    elif backend.triton_gpu_available():
        triton_mode = "GPU (compiled kernels)"
        if backend.allow_old_triton() and backend._version_tuple(triton_version or "0") < backend.MIN_TRITON_GPU:
            triton_mode += " with an untested older Triton (FASTVAE_ALLOW_OLD_TRITON=1)"
    elif triton_version is None:
        triton_mode = "not installed"
    else:
        triton_mode = "interpreter only (TRITON_INTERPRET=1; no usable GPU)"
    report = {
        "fastvae": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_available": torch.cuda.is_available(),
        "compiled_core": {
            "built": core is not None,
            "devices": devices,
            "error": None if core is not None else str(backend.compiled_core_error()),
        },
        "build": build_info(),
        "triton_mode": triton_mode,
        "requested_backend": backend.requested_backend(),
        "default_backends": {"cpu": backend.default_backends("cpu")},
        "precision": precision.report(),
        "host_memory": host_memory.report(),
        # which library multiplies the fused ops' CPU float32 products (csrc/gemm.h); None without the core
        "cpu_fp32_gemm": _cpu_fp32_gemm(core),
    }
    if torch.cuda.is_available():
        report["default_backends"]["cuda"] = backend.default_backends("cuda")
    return report


def format_report(r: dict) -> str:
    lines = [
        f"fastvae {r['fastvae']}   torch {r['torch']}   triton {r['triton'] or 'not installed'}",
        "compiled core fastvae._C: " + ("built for " + ", ".join(r["compiled_core"]["devices"])
                                         if r["compiled_core"]["built"]
                                         else f"NOT built ({r['compiled_core']['error']})"),
        f"built against torch {r['build'].get('torch_version', '?')}, CUDA build: "
        f"{r['build'].get('with_cuda', '?')}"
        + (f" (architectures {r['build'].get('cuda_arch_list') or 'of the GPUs at build time'}, toolkit "
           f"{r['build'].get('cuda_home') or '?'})" if r["build"].get("with_cuda") else ""),
        f"CUDA device available: {r['cuda_available']}",
        f"Triton: {r['triton_mode']}",
        f"FASTVAE_BACKEND: {r['requested_backend']}",
        f"CPU: {r['precision']['cpu']}; bf16 matrix instructions: "
        f"{', '.join(r['precision']['cpu_bf16_instructions']) or 'none'}; --precision auto picks "
        f"{r['precision']['auto_on_cpu']} on the CPU"
        + (f", {r['precision']['auto_on_cuda']} on the GPU" if "auto_on_cuda" in r["precision"] else ""),
        f"freed CPU memory kept in the process: {r['host_memory']}",
        f"CPU float32 products of the fused ops: {r['cpu_fp32_gemm'] or 'n/a (no compiled core)'} "
        f"(FASTVAE_CPU_FP32_GEMM: auto = oneDNN on x86 CPUs not made by Intel, else ATen's BLAS)",
    ]
    for device, table in r["default_backends"].items():
        lines.append(f"default backend per op on {device}:")
        width = max((len(k) for k in table), default=0)
        lines.extend(f"  {name:<{width}}  {choice}" for name, choice in table.items())
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report = collect()
    print(json.dumps(report, indent=2) if "--json" in argv else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
