"""buildtools/cxx_runtime.py: setup.py keeps fastvae._C on the shared libstdc++ (a static copy beside torch's
crashed the process on the first C++ error message on a GPU image): the link-flag filter, the ELF reader on real
shared objects built here with and without -static-libstdc++, and the installed extension itself."""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cxx_runtime", ROOT / "buildtools" / "cxx_runtime.py")
runtime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime)

linux_gxx = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("g++") is None,
                               reason="needs Linux and g++")


def test_the_flag_is_removed_from_lists_and_strings():
    assert runtime.strip_static_runtime(["g++", "-shared", "-static-libstdc++", "-O2"]) == \
        (["g++", "-shared", "-O2"], ["-static-libstdc++"])
    assert runtime.strip_static_runtime("gcc -shared -static-libstdc++ -L/x") == ("gcc -shared -L/x",
                                                                                 ["-static-libstdc++"])
    assert runtime.strip_static_runtime("gcc  -shared") == ("gcc  -shared", [])  # untouched when nothing goes
    assert runtime.strip_static_runtime(None) == (None, [])
    assert runtime.strip_static_runtime(["-static-libgcc"]) == (["-static-libgcc"], [])  # only libstdc++'s flag


def _shared_object(tmp_path, name, flags):
    source = tmp_path / "throws.cpp"
    source.write_text('#include <sstream>\n#include <stdexcept>\n'
                      'extern "C" int fails(long n) { std::ostringstream s; s << "bad " << n;'
                      ' throw std::runtime_error(s.str()); }\n')
    out = tmp_path / name
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", str(source), "-o", str(out), *flags], check=True,
                   capture_output=True, timeout=120)
    return out


@linux_gxx
def test_a_static_copy_is_found_and_the_shared_one_passes(tmp_path):
    shared = _shared_object(tmp_path, "shared.so", [])
    assert any(n.startswith("libstdc++.so") for n in runtime.elf_needed(shared))
    assert runtime.static_runtime_problem(shared) is None
    static = _shared_object(tmp_path, "static.so", ["-static-libstdc++"])
    assert not any(n.startswith("libstdc++.so") for n in runtime.elf_needed(static))
    problem = runtime.static_runtime_problem(static)
    assert "static.so" in problem and "-static-libstdc++" in problem and "LDFLAGS" in problem


def test_files_of_other_formats_are_not_judged(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file")
    assert runtime.elf_needed(text) is None and runtime.static_runtime_problem(text) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared objects")
def test_the_built_extension_loads_the_shared_libstdcxx():
    import fastvae

    built = glob.glob(os.path.join(os.path.dirname(fastvae.__file__), "_C*.so"))
    if not built:
        pytest.skip("fastvae._C is not built")
    assert runtime.static_runtime_problem(built[0]) is None, runtime.elf_needed(built[0])
