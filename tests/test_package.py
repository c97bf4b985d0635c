"""The installed package: compiled core, backend selection, build metadata, install errors."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastvae
from fastvae import backend, ops

ROOT = Path(__file__).resolve().parents[1]


def run_py(code, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=cwd or ROOT, timeout=300)


def test_compiled_core_is_built_for_cpu():
    assert backend.compiled_core() is not None, backend.compiled_core_error()
    assert backend.cpp_available("cpu")
    assert hasattr(torch.ops.fastvae, "lstm_cell_forward")


def test_info_reports_build_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastvae.info", "--json"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, FASTVAE_BACKEND="auto"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["fastvae"] == fastvae.__version__
    assert report["torch"] == torch.__version__
    assert report["compiled_core"]["built"] and "CPU" in report["compiled_core"]["devices"]
    assert report["build"]["torch_version"] == torch.__version__
    assert report["default_backends"]["cpu"]["lstm_cell"] == "cpp"
    assert report["cpu_fp32_gemm"] in ("onednn", "aten")
    text = subprocess.run([sys.executable, "-m", "fastvae.info"], capture_output=True, text=True, timeout=300)
    assert "fastvae._C: built for CPU" in text.stdout
    if not torch.cuda.is_available():
        assert "interpreter" in text.stdout or "not installed" in text.stdout or "older than" in text.stdout


def test_kernels_are_installed_under_fastvae_not_top_level():
    spec = importlib.util.find_spec("fastvae.kernels")
    package = Path(importlib.util.find_spec("fastvae").origin).parent
    assert spec is not None and Path(spec.origin).parent == package / "kernels"
    # No top-level `kernels` package may be installed by fastvae (another distribution may own one: Hugging Face's
    # `kernels` comes with transformers 5)
    out = run_py("import importlib.metadata as m; print(sorted(m.packages_distributions().get('kernels', [])))",
                 cwd="/")
    assert out.returncode == 0, out.stderr
    assert "fastvae" not in out.stdout, out.stdout


def test_backend_env_validation(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="FASTVAE_BACKEND='cuda-magic' is not a backend"):
        backend.select("lstm_cell", "cpu")


@pytest.mark.parametrize("requested,expected", [("auto", "cpp"), ("torch", "torch"), ("cpp", "cpp"),
                                                ("triton", "cpp")])
def test_backend_selection_for_compiled_op(monkeypatch, requested, expected):
    # lstm_cell has no Triton kernel: a request for triton keeps its auto choice.
    monkeypatch.setenv("FASTVAE_BACKEND", requested)
    assert backend.select("lstm_cell", "cpu") == expected


def test_triton_op_selection(monkeypatch):
    info = backend.OpInfo("triton_only_example", triton=True, cpp=False)
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    assert backend.select(info, "cpu") == "torch"  # CPU tensors: reference by default
    if backend.triton_importable() and not backend.triton_too_old():
        monkeypatch.setenv("FASTVAE_BACKEND", "triton")
        assert backend.select(info, "cpu") == "triton"
        assert os.environ["TRITON_INTERPRET"] == "1"


def test_missing_backend_names_the_rebuild_command(monkeypatch):
    monkeypatch.setattr(backend, "_load_compiled_core", lambda: (None, ImportError("no module _C")))
    monkeypatch.setenv("FASTVAE_BACKEND", "cpp")
    with pytest.raises(backend.BackendUnavailable, match="pip install --no-build-isolation"):
        backend.select("lstm_cell", "cpu")
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    assert backend.select("lstm_cell", "cpu") == "torch"  # auto falls back quietly


def test_missing_cuda_build_names_the_cuda_rebuild_command(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "cpp")
    if backend.cpp_available("cuda"):
        pytest.skip("this build has CUDA")
    with pytest.raises(backend.BackendUnavailable, match="FASTVAE_CUDA=1"):
        backend.select("lstm_cell", "cuda")


def test_missing_triton_is_reported(monkeypatch):
    monkeypatch.setattr(backend, "triton_importable", lambda: False)
    monkeypatch.setattr(backend, "triton_version", lambda: None)  # not installed: no version either
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    info = backend.OpInfo("triton_only_example", triton=True, cpp=False)
    with pytest.raises(backend.BackendUnavailable, match="pip install triton"):
        backend.select(info, "cpu")


@pytest.mark.parametrize("B,H", [(1, 1), (37, 50), (4, 256)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_lstm_cell_op_matches_reference(B, H, dtype, tol):
    gates = (torch.randn(B, 4 * H, dtype=torch.float64) * 4).to(dtype)
    c_prev = torch.randn(B, H, dtype=torch.float64).to(dtype)
    got = torch.ops.fastvae.lstm_cell_forward(gates, c_prev)
    want = ops.lstm_cell_reference(gates.double(), c_prev.double())
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)


def test_lstm_cell_op_non_contiguous_and_extreme():
    gates = torch.randn(40, 8, dtype=torch.float64).t() * 1e3  # [8, 40], column-major, saturating
    c_prev = torch.randn(10, 8, dtype=torch.float64).t()
    assert not gates.is_contiguous()
    got = torch.ops.fastvae.lstm_cell_forward(gates, c_prev)
    want = ops.lstm_cell_reference(gates, c_prev)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w)


def test_lstm_cell_op_bad_input_messages():
    with pytest.raises(RuntimeError, match="4\\*hidden"):
        torch.ops.fastvae.lstm_cell_forward(torch.zeros(2, 7), torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.fastvae.lstm_cell_forward(torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="shapes do not match"):
        ops.lstm_cell(torch.zeros(3, 8), torch.zeros(2, 2))


def test_lstm_cell_opcheck():
    gates, c_prev = torch.randn(5, 12), torch.randn(5, 3)
    torch.library.opcheck(torch.ops.fastvae.lstm_cell_forward.default, (gates, c_prev),
                          test_utils=("test_schema", "test_faketensor"))


def test_setup_fails_clearly_without_torch():
    # Block the torch import and run setup.py: the message must say what to do, not a setuptools traceback.
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    out = run_py(code)
    assert out.returncode != 0
    assert "PyTorch is not installed" in out.stderr and "--no-build-isolation" in out.stderr
    assert "Traceback" not in out.stderr


def test_setup_rejects_old_torch():
    code = ("import sys, runpy, torch; torch.__version__ = '2.1.0'; sys.argv = ['setup.py', '--version']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    out = run_py(code)
    assert out.returncode != 0 and "needs torch >= 2.5" in out.stderr and "Traceback" not in out.stderr


def test_setup_rejects_bad_cuda_switch():
    code = "import sys, runpy; sys.argv = ['setup.py', '--version']; runpy.run_path('setup.py', run_name='__main__')"
    out = run_py(code, env={"FASTVAE_CUDA": "yes"})
    assert out.returncode != 0 and "FASTVAE_CUDA must be 0 or 1" in out.stderr


def test_one_source_list_for_both_builds():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert "csrc/sources.txt" in cmake and "sources.txt" in setup
    listed = [line.split()[1] for line in (ROOT / "csrc/sources.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for path in listed:
        assert (ROOT / path).is_file(), f"csrc/sources.txt lists a missing file: {path}"
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu")}
    assert on_disk == set(listed), f"sources not in csrc/sources.txt: {on_disk - set(listed)}"


def test_a_triton_older_than_the_kernels_support_is_reported_not_used(monkeypatch):
    monkeypatch.delenv("FASTVAE_ALLOW_OLD_TRITON", raising=False)
    monkeypatch.setattr(backend, "triton_version", lambda: "3.1.0")
    assert "3.1.0" in backend.triton_too_old() and "3.8" in backend.triton_too_old()
    assert not backend.triton_gpu_available.__wrapped__()
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    info = backend.OpInfo("triton_only_example", triton=True, cpp=False)
    with pytest.raises(backend.BackendUnavailable, match="older than"):
        backend.select(info, "cpu")
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")
    assert backend.select(info, "cpu") == "torch"
    for new_enough in ("3.8.0", "3.9.0+git1234", "4.0"):
        monkeypatch.setattr(backend, "triton_version", lambda v=new_enough: v)
        assert backend.triton_too_old() is None
    # torch 2.11's Triton 3.6: compiled GPU kernels yes (checked on an H200), the interpreter no
    monkeypatch.setattr(backend, "triton_version", lambda: "3.6.0")
    assert "3.8" in backend.triton_too_old(interpreter=True) and "interpreter" in backend.triton_too_old(True)
    assert backend.triton_too_old(interpreter=False) is None
    monkeypatch.setattr(backend, "triton_version", lambda: "3.5.1")
    assert "3.6" in backend.triton_too_old(interpreter=False)
    monkeypatch.setenv("FASTVAE_ALLOW_OLD_TRITON", "1")  # testing an older one on purpose
    assert backend.triton_too_old(interpreter=True) is None and backend.triton_too_old(interpreter=False) is None



def test_the_version_is_written_once():
    """__version__ in fastvae/__init__.py is the only copy: the installed metadata (pyproject's dynamic version)
    and the build record (setup.py reads the same line) agree with it, and no other file spells it out."""
    import importlib.metadata

    from fastvae._build_info import BUILD_INFO

    assert importlib.metadata.version("fastvae") == fastvae.__version__ == BUILD_INFO["version"]
    for name in ("setup.py", "pyproject.toml"):
        assert f'"{fastvae.__version__}"' not in (ROOT / name).read_text(), name
