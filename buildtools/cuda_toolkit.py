"""Where the CUDA toolkit is, found the way users' machines lay it out.

torch.utils.cpp_extension guesses CUDA_HOME as the folder above the first `nvcc` on PATH. That is wrong
whenever `nvcc` is a wrapper script or a symlink farm (/usr/local/bin/nvcc -> `exec /opt/cuda-13.0/bin/nvcc`
gives CUDA_HOME=/usr/local, and the build then fails deep in a header on cuda_runtime.h). Here, in order:
CUDA_HOME, CUDA_PATH, the `nvcc` on PATH asked for its own install folder (`nvcc --dryrun` prints it, so
wrappers and symlinks of any depth resolve), then /usr/local/cuda. A folder counts as a toolkit only if it
holds bin/nvcc and include/cuda_runtime.h. setup.py imports this file by path (no package import, no torch).
"""
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV_VARS = ("CUDA_HOME", "CUDA_PATH")
DEFAULT_LOCATIONS = ("/usr/local/cuda",)
HINT = ("set CUDA_HOME to the toolkit's folder (the one holding bin/nvcc and include/cuda_runtime.h, "
        "for example CUDA_HOME=/usr/local/cuda), or build without CUDA with FASTVAE_CUDA=0")


class CudaToolkitNotFound(RuntimeError):
    pass


def toolkit_problem(path) -> "str | None":
    """Why `path` is not a usable CUDA toolkit, or None when it is one."""
    root = Path(path)
    if not root.is_dir():
        return f"{root} is not a folder"
    nvcc = root / "bin" / "nvcc"
    if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
        return f"{nvcc} is missing or not executable"
    if not (root / "include" / "cuda_runtime.h").is_file():
        return f"{root / 'include' / 'cuda_runtime.h'} is missing"
    return None


def toolkit_version(home, timeout: float = 60.0) -> "str | None":
    """The toolkit's CUDA version ("13.0"), from `nvcc --version` ("release 13.0,"); None if it does not say."""
    try:
        proc = subprocess.run([str(Path(home) / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", proc.stdout + proc.stderr)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def version_problem(toolkit: "str | None", torch_cuda: str) -> "str | None":
    """Why a toolkit of CUDA `toolkit` cannot build against a torch built with CUDA `torch_cuda`, or None.
    Major versions must agree (torch's extension builder refuses otherwise); a minor difference is fine."""
    if toolkit is None or toolkit.split(".")[0] == torch_cuda.split(".")[0]:
        return None
    return (f"the CUDA toolkit is {toolkit} but this torch was built with CUDA {torch_cuda}; their major "
            f"versions must match: install the torch build for CUDA {toolkit.split('.')[0]}, or point CUDA_HOME "
            f"at a CUDA {torch_cuda.split('.')[0]} toolkit")


def nvcc_install_folder(nvcc: str, timeout: float = 60.0) -> "str | None":
    """The toolkit folder of an `nvcc` command, wrappers included: `nvcc --dryrun` prints `TOP=<folder>/bin/..`.
    Falls back to the folder above the command's real path (symlinks resolved) when the dry run gives nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cu"
        source.write_text("int main() { return 0; }\n")
        try:
            proc = subprocess.run([nvcc, "--dryrun", "-c", str(source), "-o", str(Path(tmp) / "probe.o")],
                                  capture_output=True, text=True, timeout=timeout)
            match = re.search(r"^#\$ TOP=(.+?)\s*$", proc.stdout + proc.stderr, flags=re.MULTILINE)
        except (OSError, subprocess.SubprocessError):
            match = None
    if match:
        return os.path.realpath(match.group(1).strip().strip('"'))
    return str(Path(os.path.realpath(nvcc)).parent.parent)


def find_cuda_home(environ=None, which=shutil.which, default_locations=DEFAULT_LOCATIONS):
    """(toolkit folder, how it was found). A variable that is set but wrong is an error, not skipped: the user
    asked for that folder. Raises CudaToolkitNotFound with what was tried and what to set."""
    environ = os.environ if environ is None else environ
    for var in ENV_VARS:
        value = environ.get(var)
        if value:
            problem = toolkit_problem(value)
            if problem:
                raise CudaToolkitNotFound(f"{var}={value} is not a CUDA toolkit ({problem}); {HINT}")
            return os.path.realpath(value), var
    tried = []
    nvcc = which("nvcc", path=environ.get("PATH"))
    if nvcc:
        folder = nvcc_install_folder(nvcc)
        problem = toolkit_problem(folder) if folder else "it did not say where it is installed"
        if problem is None:
            return folder, f"nvcc on PATH ({nvcc})"
        tried.append(f"nvcc on PATH ({nvcc}): {problem}")
    else:
        tried.append("no nvcc on PATH")
    for folder in default_locations:
        problem = toolkit_problem(folder)
        if problem is None:
            return os.path.realpath(folder), "the default location"
        tried.append(problem)
    raise CudaToolkitNotFound("no CUDA toolkit found (" + "; ".join(tried) + f"); {HINT}")
