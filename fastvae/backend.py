"""Which implementation an op runs: the one place that decides, and the one that imports the kernels.

Every op has a plain-torch reference. Some also have a Triton kernel (used for CUDA
tensors when Triton can compile for the GPU) and some a compiled `fastvae._C` kernel
(CPU and, in CUDA builds, GPU). The default (`auto`) picks, per call and per device:

  1. Triton, for CUDA tensors, when the op has a Triton kernel and Triton works here;
  2. the compiled `_C` op, when the op has one and `_C` was built for that device;
  3. the plain-torch reference otherwise.

`FASTVAE_BACKEND=torch|triton|cpp|auto` overrides. A named backend applies to the ops
that implement it; the others keep their `auto` choice. A named backend that is not
installed raises `BackendUnavailable` with the command that fixes it. Triton on CPU
tensors runs in interpreter mode (`TRITON_INTERPRET=1`), slowly; fastvae turns the
interpreter on when `FASTVAE_BACKEND=triton` is set on a machine without a GPU.

Under `torch.compile` the same decision is made once, when a graph is traced (the choice is
a constant of the graph: changing FASTVAE_BACKEND afterwards does not retrace it). Both fast
paths are custom ops with fake kernels and autograd (`torch.ops.fastvae.*_triton` from
`fastvae.kernels`, the `_C` ops from `csrc/`), so a compiled graph holds the kernel calls.
The kernel modules are imported here only (`implementation`), after the interpreter switch:
`@triton.jit` reads TRITON_INTERPRET when a kernel module is imported.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass

import torch

AUTO, TORCH, TRITON, CPP = "auto", "torch", "triton", "cpp"
BACKENDS = (AUTO, TORCH, TRITON, CPP)
REBUILD_COMMAND = "pip install --no-build-isolation -e .   (from the fastvae checkout)"
CUDA_REBUILD_COMMAND = "FASTVAE_CUDA=1 pip install --no-build-isolation -e ."


class BackendUnavailable(RuntimeError):
    """A backend asked for by name is not installed or cannot run here."""


@dataclass(frozen=True)
class OpInfo:
    """An op and its fast paths. `kernels`: the module of `fastvae.kernels` that holds `<name>_reference` (and,
    with `triton`, `<name>_triton`); `triton_backward=False`: the Triton kernel is forward-only, so a call that
    needs a gradient runs the reference."""
    name: str
    triton: bool
    cpp: bool
    kernels: str | None = None
    triton_backward: bool = True


OPS: dict[str, OpInfo] = {}


def register_op(name: str, *, triton: bool = False, cpp: bool = False, kernels: str | None = None,
                triton_backward: bool = True) -> OpInfo:
    """Declare an op and which fast paths it has (the torch reference always exists)."""
    info = OpInfo(name, triton, cpp, kernels, triton_backward)
    OPS[name] = info
    return info


def requested_backend() -> str:
    value = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"FASTVAE_BACKEND={value!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return value


# ---------------------------------------------------------------- compiled core
@functools.lru_cache(maxsize=None)
def _load_compiled_core():
    try:
        return importlib.import_module("fastvae._C"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, exc


def compiled_core():
    """The `fastvae._C` module, or None when it is not built."""
    return _load_compiled_core()[0]


def compiled_core_error() -> Exception | None:
    return _load_compiled_core()[1]


def cpp_available(device_type: str) -> bool:
    core = compiled_core()
    if core is None:
        return False
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return bool(core.built_with_cuda)
    return False


def require_cpp(device_type: str) -> None:
    if cpp_available(device_type):
        return
    core = compiled_core()
    if core is None:
        raise BackendUnavailable(
            f"the compiled core fastvae._C is not available ({compiled_core_error()}); rebuild it with: "
            f"{REBUILD_COMMAND}")
    raise BackendUnavailable(
        f"fastvae._C was built without {device_type.upper()} support; rebuild it with: {CUDA_REBUILD_COMMAND}")


# ---------------------------------------------------------------- Triton
def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The oldest Triton the kernels are tested with, in the interpreter (CPU tensors) and compiled for a GPU. Triton
# 3.8 (torch 2.14.1's) passes everything. Triton 3.6 (torch 2.11's) compiled and ran every kernel on an H200
# (scripts/gpu_check.sh, 2026-12-04) but its interpreter fails them (TypeError: only 0-dimensional arrays can be
# converted to Python scalars). torch 2.5.1's Triton 3.1 fails both: its interpreter refuses the kernels'
# tl.arange bounds and its ahead-of-time compile API differs. With an older Triton the Triton backend is
# unavailable where it fails and every op uses its C++ or torch path, which give the same results.
MIN_TRITON = (3, 8)
MIN_TRITON_GPU = (3, 6)


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def allow_old_triton() -> bool:
    return os.environ.get("FASTVAE_ALLOW_OLD_TRITON", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_version() -> str | None:
    """The installed Triton's version, read from its metadata (triton itself is not imported)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def triton_too_old(interpreter: bool | None = None) -> str | None:
    """Why the installed Triton is too old for the kernels, or None: run in the interpreter (`interpreter=True`),
    compiled for a GPU (False), or as this process runs them (None: TRITON_INTERPRET decides).
    `FASTVAE_ALLOW_OLD_TRITON=1` uses an older Triton anyway (to test one)."""
    version = triton_version()
    if interpreter is None:
        interpreter = triton_interpreter()
    minimum = MIN_TRITON if interpreter else MIN_TRITON_GPU
    if version is None or _version_tuple(version) >= minimum or allow_old_triton():
        return None
    wanted = ".".join(map(str, minimum))
    where = "in the interpreter (CPU tensors)" if interpreter else "compiled for a GPU"
    return (f"triton {version} is older than {wanted}, the oldest the fastvae kernels are tested with {where}; "
            f"upgrade it (pip install 'triton>={wanted}') or use the C++/torch backends (FASTVAE_BACKEND=auto)")


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything else
        return False
    return True


@functools.lru_cache(maxsize=None)
def triton_gpu_available() -> bool:
    """True when Triton compiles real GPU kernels here (not the interpreter)."""
    if triton_interpreter() or triton_too_old(interpreter=False) or not triton_importable() \
            or not torch.cuda.is_available():
        return False
    try:
        from triton.runtime import driver

        driver.active.get_current_target()
    except Exception:
        return False
    return True


def _kernels_imported() -> bool:
    import sys

    # every module with @triton.jit kernels imports _common (dtypes.py and free_bits.py do not)
    return "fastvae.kernels._common" in sys.modules


def _triton_installed() -> bool:
    """Whether triton is installed, without importing it (importing triton.language builds its own
    @jit helpers, which must happen after TRITON_INTERPRET is decided)."""
    import importlib.util
    import sys

    return "triton" in sys.modules or importlib.util.find_spec("triton") is not None


def _switch_interpreter_on() -> bool:
    """The one place that sets TRITON_INTERPRET=1 (for Triton on CPU tensors). It is read when triton.language
    and each kernel module are imported, so it only works before that; returns whether the interpreter is on."""
    import sys

    if triton_interpreter():
        return True
    if _kernels_imported() or "triton.language" in sys.modules:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def require_triton(device_type: str) -> None:
    too_old = triton_too_old(interpreter=device_type == "cpu" or triton_interpreter())
    if too_old:
        raise BackendUnavailable(too_old)
    if device_type == "cpu":
        if not _triton_installed():
            raise BackendUnavailable("Triton is not installed; install it with: pip install triton")
        if not _switch_interpreter_on():
            raise BackendUnavailable(
                "Triton kernels on CPU tensors need the interpreter, but Triton was already imported in "
                "compiled mode: set TRITON_INTERPRET=1 before importing fastvae (and before torch.compile, "
                "which imports Triton)")
        if not triton_importable():
            raise BackendUnavailable("Triton is installed but does not import; reinstall it with: pip install triton")
        return
    if not triton_importable():
        raise BackendUnavailable("Triton is not installed; install it with: pip install triton")
    if device_type == "cuda":
        if triton_interpreter():
            return  # the interpreter also runs CUDA tensors (copying them to the host)
        if not triton_gpu_available():
            raise BackendUnavailable("Triton cannot compile for this GPU (no working Triton GPU driver); "
                                     "use FASTVAE_BACKEND=auto or torch")
        return
    raise BackendUnavailable(f"Triton kernels do not run on {device_type} tensors")


# ---------------------------------------------------------------- selection
def _constant_when_traced(fn):
    """`torch.compiler.assume_constant_result(fn)`, without its `import torch._dynamo`: that import loads
    triton.language, which must wait until fastvae has decided on the interpreter. The public decorator sets
    only this attribute (torch 2.5 to 2.14); tests/test_compile.py checks that traced graphs hold the choice."""
    fn._dynamo_marked_constant = True
    return fn


_REPORTED: set = set()


def _report(name: str, device_type: str, choice: str) -> str:
    """A DEBUG line the first time an op is decided for a device (`fastvae train --verbose` shows it)."""
    key = (name, device_type, choice)
    if key not in _REPORTED:
        _REPORTED.add(key)
        import logging

        logging.getLogger("fastvae.backend").debug("%s on %s tensors runs the %s path", name, device_type, choice)
    return choice


@_constant_when_traced
def _decide(name: str, triton: bool, cpp: bool, device_type: str) -> str:
    """The choice for op `name`. Under torch.compile this runs once per trace, in plain Python, and its result is
    a constant of the graph (it reads the environment and imports lazily, which tracing could not follow)."""
    return _report(name, device_type, _choose(triton, cpp, device_type))


def _choose(triton: bool, cpp: bool, device_type: str) -> str:
    """The rule (module docstring): a named backend the op implements, else Triton for CUDA tensors, else the
    compiled core, else the reference."""
    wanted = requested_backend()
    if wanted == TORCH:
        return TORCH
    if wanted == TRITON and triton:
        require_triton(device_type)
        return TRITON
    if wanted == CPP and cpp:
        require_cpp(device_type)
        return CPP
    # auto, or a named backend this op does not implement
    if triton and device_type == "cuda" and triton_gpu_available():
        return TRITON
    if cpp and cpp_available(device_type):
        return CPP
    return TORCH


def select(op: str | OpInfo, device: torch.device | str) -> str:
    """The backend ('triton', 'cpp' or 'torch') that `op` uses for tensors on `device`."""
    info = OPS[op] if isinstance(op, str) else op
    return _decide(info.name, info.triton, info.cpp, torch.device(device).type)


@_constant_when_traced
def _load_kernels(name: str, device_type: str) -> bool:
    """Import `fastvae.kernels.<name>`. With FASTVAE_BACKEND=triton and CPU tensors the interpreter goes on first,
    even for an op without a Triton kernel (its module imports Triton too, and a later Triton op could not run
    interpreted). The module is then read as an attribute of the package, which tracing can follow (a dict
    filled here could not: torch.compile would not see the entries this adds)."""
    if device_type == "cpu" and requested_backend() == TRITON and not triton_too_old(interpreter=True) \
            and _triton_installed():
        _switch_interpreter_on()  # when it is too late, the Triton op's own selection says so
    importlib.import_module(f"fastvae.kernels.{name}")
    return True


def _kernel_package():
    import fastvae.kernels  # its __init__ imports nothing: no Triton here

    return fastvae.kernels


def _kernel_function(info: OpInfo, device_type: str, suffix: str):
    if info.kernels is None:
        raise ValueError(f"op {info.name!r} has no kernel module")
    _load_kernels(info.kernels, device_type)
    return getattr(getattr(_kernel_package(), info.kernels), f"{info.name}_{suffix}")


def implementation(op: str | OpInfo, device: torch.device | str, *, needs_grad: bool = False):
    """The function that runs a kernel-module op for tensors on `device`: `<name>_triton` when Triton is
    selected (and, for a forward-only kernel, no gradient is needed), else `<name>_reference`."""
    info = OPS[op] if isinstance(op, str) else op
    if needs_grad and not info.triton_backward:
        choice = TORCH  # the Triton kernel cannot carry the gradient; not even asked for
    else:
        choice = select(info, device)
    return _kernel_function(info, torch.device(device).type, "triton" if choice == TRITON else "reference")


def reference(op: str | OpInfo, device: torch.device | str = "cpu"):
    """The plain-torch reference of a kernel-module op (what benchmarks and tests compare against)."""
    info = OPS[op] if isinstance(op, str) else op
    return _kernel_function(info, torch.device(device).type, "reference")


def default_backends(device_type: str) -> dict[str, str]:
    """What every registered op would run on `device_type` under the current settings."""
    out = {}
    for name, info in sorted(OPS.items()):
        try:
            out[name] = select(info, device_type)
        except BackendUnavailable as exc:
            out[name] = f"unavailable ({exc})"
    return out
