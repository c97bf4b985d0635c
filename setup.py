"""Build of fastvae and its compiled core `fastvae._C`.

Switches (environment variables):
  FASTVAE_CUDA=1        build the CUDA kernels (needs a CUDA-enabled torch and nvcc)
  FASTVAE_CUDA=0        CPU-only build, even where CUDA is available
  FASTVAE_CUDA unset    CUDA when torch is a CUDA build and the CUDA toolkit is found (else CPU, with a note)
  CUDA_HOME/CUDA_PATH   the CUDA toolkit; else the nvcc on PATH (wrappers and symlinks followed), else
                        /usr/local/cuda (buildtools/cuda_toolkit.py)
  TORCH_CUDA_ARCH_LIST  GPU architectures; default: the visible GPUs', or 8.0;9.0+PTX when none is visible
  MAX_JOBS              parallel compile jobs (ninja)
Install against the torch already installed:  pip install --no-build-isolation .
"""
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
MIN_TORCH = (2, 5)
REBUILD_HINT = "pip install --no-build-isolation -e ."


def _fail(msg):
    sys.stderr.write("\nfastvae build error: " + msg + "\n\n")
    sys.exit(1)


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    _fail(
        "PyTorch is not installed in this environment. fastvae compiles against the installed torch, so\n"
        "install torch first (here: pip install torch==2.13.0), then install fastvae with\n"
        "  pip install --no-build-isolation .\n"
        "(--no-build-isolation lets the build see your torch instead of downloading another one)."
    )

_torch_version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
if _torch_version < MIN_TORCH:
    _fail(f"fastvae needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (torch.library custom ops); "
          f"this environment has torch {torch.__version__}. Upgrade torch, then reinstall fastvae.")


def read_sources():
    """csrc/sources.txt: `kind path` per line; the same list feeds CMakeLists.txt."""
    sources = {}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            kind, path = line.split()
            sources.setdefault(kind, []).append(path)
    return sources


def _load_buildtool(name):
    """buildtools/<name>.py, by path: setup.py must not import the fastvae package (it needs _C)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"fastvae_{name}", ROOT / "buildtools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_cuda_toolkit_finder():
    return _load_buildtool("cuda_toolkit")


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's extension builder, linking the shared libstdc++ (buildtools/cxx_runtime.py says why): the
    -static-libstdc++ flag is removed from the link command, and the linked file is checked."""

    def build_extensions(self):
        runtime = _load_buildtool("cxx_runtime")
        removed = []
        for attr in ("linker_so", "linker_so_cxx"):
            command, dropped = runtime.strip_static_runtime(getattr(self.compiler, attr, None))
            if dropped:
                setattr(self.compiler, attr, command)
                removed += dropped
        for ext in self.extensions:
            ext.extra_link_args, dropped = runtime.strip_static_runtime(ext.extra_link_args or [])
            removed += dropped
        if removed:
            print("fastvae build: removed -static-libstdc++ from the link command (a second libstdc++ beside "
                  "torch's crashes the process on C++ error messages)", file=sys.stderr)
        super().build_extensions()
        for ext in self.extensions:
            problem = runtime.static_runtime_problem(self.get_ext_fullpath(ext.name))
            if problem:
                _fail(problem)


# Architectures built when none is asked for (TORCH_CUDA_ARCH_LIST) and no GPU is visible to ask: A100 and
# H100 as machine code, PTX of the newest so later GPUs (Blackwell) compile it at load time.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _use_cuda_toolkit(finder):
    """Find the toolkit and hand it to torch's extension builder (its own guess breaks on nvcc wrappers)."""
    home, how = finder.find_cuda_home()
    problem = finder.version_problem(finder.toolkit_version(home), torch.version.cuda)
    if problem:
        raise finder.CudaToolkitNotFound(f"{home}: {problem}")
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        how += f"; no GPU visible, so TORCH_CUDA_ARCH_LIST={DEFAULT_CUDA_ARCHS}"
    print(f"fastvae build: CUDA toolkit {home} ({how})", file=sys.stderr)


def want_cuda():
    flag = os.environ.get("FASTVAE_CUDA")
    if flag is not None and flag not in ("0", "1"):
        _fail(f"FASTVAE_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    if torch.version.cuda is None:
        if flag == "1":
            _fail(f"FASTVAE_CUDA=1 but this torch ({torch.__version__}) is a CPU-only build. Install a CUDA "
                  "build of torch, or build fastvae for the CPU with FASTVAE_CUDA=0.")
        return False
    finder = _load_cuda_toolkit_finder()
    try:
        _use_cuda_toolkit(finder)
    except finder.CudaToolkitNotFound as exc:
        if flag == "1" or any(os.environ.get(var) for var in finder.ENV_VARS):
            _fail(f"FASTVAE_CUDA=1 needs the CUDA toolkit: {exc}" if flag == "1" else str(exc))
        # A CUDA torch without a toolkit (a GPU machine with no nvcc): the CPU build works; say how to get CUDA.
        print(f"fastvae build: building for the CPU only, since this torch has CUDA {torch.version.cuda} but {exc}",
              file=sys.stderr)
        return False
    return True


# No -std flag: torch's extension builder adds the standard the installed torch's headers need (C++17 up to
# torch 2.13, C++20 from 2.14); forcing one breaks every other torch.
EXTRA_CXX_FLAGS = ["-O3"]


def package_version() -> str:
    """__version__ from fastvae/__init__.py, read without importing fastvae (it needs _C); pyproject.toml reads
    the same line (tool.setuptools.dynamic), so the version is written once."""
    import ast

    with open(ROOT / "fastvae" / "__init__.py") as handle:
        for node in ast.parse(handle.read()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
                return ast.literal_eval(node.value)
    raise RuntimeError("fastvae/__init__.py does not set __version__")


def write_build_info(with_cuda):
    import platform
    info = {
        "version": package_version(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "cuda_home": os.environ.get("CUDA_HOME") if with_cuda else None,
        "compiler_flags": EXTRA_CXX_FLAGS,
        "cxx_standard": "torch's own (torch.utils.cpp_extension chooses it)",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    text = ('"""Written by setup.py at build time; do not edit."""\n'
            f"BUILD_INFO = {info!r}\n")
    (ROOT / "fastvae" / "_build_info.py").write_text(text)


sources = read_sources()
with_cuda = want_cuda()
write_build_info(with_cuda)

ext_sources = sources["core"] + sources["python"]
define_macros = []
extra_compile_args = {"cxx": list(EXTRA_CXX_FLAGS)}
if with_cuda:
    Extension = cpp_extension.CUDAExtension
    ext_sources += sources.get("cuda", []) + sources.get("kernel", [])
    define_macros.append(("FASTVAE_WITH_CUDA", None))
    extra_compile_args["nvcc"] = ["-O3", "--use_fast_math"]
else:
    Extension = cpp_extension.CppExtension

ext = Extension(
    name="fastvae._C",
    sources=ext_sources,
    define_macros=define_macros,
    extra_compile_args=extra_compile_args,
)

setup(
    packages=find_packages(include=["fastvae", "fastvae.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
