"""Test setup shared by every test file.

- Triton kernels run on CPU tensors through the interpreter: TRITON_INTERPRET must be set
  before any module that defines a kernel is imported, so it is set here, first.
- Random inputs are fresh on each run: every test gets a new seed, printed when it fails;
  FASTVAE_TEST_SEED=N replays one.
"""
import os
import random

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# ../shared beside the repository; FASTVAE_SHARED names it for a copy of the tree elsewhere
# (scripts/test_torch.sh runs the suite from build/, where ../shared is not beside it).
SHARED = os.environ.get("FASTVAE_SHARED") or os.path.join(os.path.dirname(__file__), "..", "..", "shared")
SHARED_DATA = os.path.join(SHARED, "data")


def pytest_collection_modifyitems(config, items):
    """With a Triton older than the kernels support (torch 2.5's 3.1; torch 2.11's 3.6 in the interpreter), the
    Triton kernel tests skip, saying why; every op's C++ and torch paths are still tested."""
    from fastvae import backend

    interpreted, compiled = backend.triton_too_old(interpreter=True), backend.triton_too_old(interpreter=False)
    if not (interpreted or compiled):
        return
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name.startswith("test_kernels_") or "triton" in params.values() \
                or item.get_closest_marker("triton"):
            # GPU tests run the compiled kernels (in a child process without the interpreter), the rest interpret
            reason = compiled if item.get_closest_marker("gpu") else interpreted
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config):
    return (f"fastvae tests: torch {torch.__version__}, {torch.get_num_threads()} torch threads (torch's default; "
            f"subprocess tests that time or compare runs set OMP_NUM_THREADS=1)")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models gain nothing from intra-op threads; on a shared 2-core machine they only contend. A module
    takes it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    seed = int(os.environ.get("FASTVAE_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    request.node._fastvae_seed = seed
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "_fastvae_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("fastvae seed", f"replay with FASTVAE_TEST_SEED={seed}"))


@pytest.fixture
def shared_data():
    """Path of ../shared/data (real corpora beside the repository, or $FASTVAE_SHARED/data); skips when absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present beside the repository")
    return path
