"""buildtools/cuda_toolkit.py (setup.py's CUDA toolkit finder) on fake toolkit layouts: CUDA_HOME, a wrapper
script on PATH, a symlinked nvcc, the default location, and the errors that name the variable to set."""
import importlib.util
import os
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "cuda_toolkit", Path(__file__).resolve().parents[1] / "buildtools" / "cuda_toolkit.py")
cuda_toolkit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_toolkit)


def fake_toolkit(root: Path) -> Path:
    """A folder shaped like a toolkit; its nvcc answers --dryrun the way the real one does."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ TOP={root}/bin/.." >&2\n')
    nvcc.chmod(0o755)
    return root


def test_cuda_home_wins_and_a_wrong_one_is_an_error(tmp_path):
    home = fake_toolkit(tmp_path / "cuda-13.0")
    assert cuda_toolkit.find_cuda_home({"CUDA_HOME": str(home), "PATH": ""}) == (str(home), "CUDA_HOME")
    assert cuda_toolkit.find_cuda_home({"CUDA_PATH": str(home), "PATH": ""})[1] == "CUDA_PATH"
    with pytest.raises(cuda_toolkit.CudaToolkitNotFound, match="CUDA_HOME=.*is not a CUDA toolkit.*set CUDA_HOME"):
        cuda_toolkit.find_cuda_home({"CUDA_HOME": str(tmp_path), "PATH": ""})


def test_wrapper_script_on_path_resolves_to_the_real_toolkit(tmp_path):
    home = fake_toolkit(tmp_path / "opt" / "cuda-13.0")
    wrappers = tmp_path / "usr-local-bin"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {home}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    found, how = cuda_toolkit.find_cuda_home({"PATH": str(wrappers)}, default_locations=())
    assert found == os.path.realpath(home) and "nvcc on PATH" in how


def test_symlinked_nvcc_and_default_location(tmp_path):
    home = fake_toolkit(tmp_path / "cuda-12.8")
    links = tmp_path / "links"
    links.mkdir()
    (links / "nvcc").symlink_to(home / "bin" / "nvcc")
    assert cuda_toolkit.find_cuda_home({"PATH": str(links)}, default_locations=())[0] == os.path.realpath(home)
    default = tmp_path / "cuda"
    default.symlink_to(home)
    assert cuda_toolkit.find_cuda_home({"PATH": ""}, default_locations=(str(default),)) == (
        os.path.realpath(home), "the default location")


def test_nothing_found_names_the_variable(tmp_path):
    with pytest.raises(cuda_toolkit.CudaToolkitNotFound, match="no CUDA toolkit found.*set CUDA_HOME"):
        cuda_toolkit.find_cuda_home({"PATH": str(tmp_path)}, default_locations=(str(tmp_path / "none"),))


def test_the_toolkit_version_must_match_torchs_major_version(tmp_path):
    home = fake_toolkit(tmp_path / "cuda-13.0")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release 13.0, V13.0.88"\n')
    assert cuda_toolkit.toolkit_version(home) == "13.0"
    assert cuda_toolkit.version_problem("13.0", "13.0") is None
    assert cuda_toolkit.version_problem("13.0", "13.1") is None  # minor versions may differ
    assert cuda_toolkit.version_problem(None, "12.4") is None  # an nvcc that does not say: torch checks later
    problem = cuda_toolkit.version_problem("13.0", "12.4")
    assert "13.0" in problem and "12.4" in problem and "CUDA_HOME" in problem
    nvcc.write_text("#!/bin/sh\nexit 1\n")
    assert cuda_toolkit.toolkit_version(home) is None
