"""Build of fastvae and its compiled core `fastvae._C`.

Switches (environment variables):
  FASTVAE_CUDA=1        build the CUDA kernels (needs a CUDA-enabled torch and nvcc)
  FASTVAE_CUDA=0        CPU-only build, even where CUDA is available
  FASTVAE_CUDA unset    CUDA when torch has CUDA and CUDA_HOME is found, or TORCH_CUDA_ARCH_LIST is set
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


def want_cuda():
    flag = os.environ.get("FASTVAE_CUDA")
    if flag is not None and flag not in ("0", "1"):
        _fail(f"FASTVAE_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    has_toolkit = cpp_extension.CUDA_HOME is not None
    if flag == "1":
        if torch.version.cuda is None or not has_toolkit:
            _fail("FASTVAE_CUDA=1 but this torch has no CUDA support or no CUDA toolkit (CUDA_HOME) was found. "
                  f"torch {torch.__version__}, CUDA_HOME={cpp_extension.CUDA_HOME}")
        return True
    if os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.version.cuda is not None and has_toolkit:
        return True
    return torch.version.cuda is not None and has_toolkit


def write_build_info(with_cuda):
    import platform
    info = {
        "version": "0.1.0",
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
        "compiler_flags": ["-O3", "-std=c++17"],
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
extra_compile_args = {"cxx": ["-O3", "-std=c++17"]}
if with_cuda:
    Extension = cpp_extension.CUDAExtension
    ext_sources += sources.get("cuda", []) + sources.get("kernel", [])
    define_macros.append(("FASTVAE_WITH_CUDA", None))
    extra_compile_args["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math"]
else:
    Extension = cpp_extension.CppExtension

ext = Extension(
    name="fastvae._C",
    sources=ext_sources,
    define_macros=define_macros,
    extra_compile_args=extra_compile_args,
)

setup(
    packages=find_packages(include=["fastvae", "fastvae.*"]) + ["fastvae.kernels"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
