"""The C++ runtime that fastvae._C links (setup.py): always the shared libstdc++ that torch itself uses.

An extension linked with `-static-libstdc++` carries a second copy of libstdc++ into a process whose torch
already loaded the shared one. The two copies' locale state differs, and the first C++ error message that
fastvae formats (any TORCH_CHECK on a bad input) crashes the process in std::ostream (seen on a GPU image whose
build flags added it, 2026-12-04: a segmentation fault in std::codecvt inside fastvae._C). So setup.py removes
the flag from the link command, wherever it came from (Python's sysconfig LDSHARED, LDFLAGS), and checks the
linked file: its dynamic section must name libstdc++.so.
"""
from __future__ import annotations

import struct

STATIC_RUNTIME_FLAGS = ("-static-libstdc++",)


def strip_static_runtime(command):
    """(command without the static-libstdc++ flags, the flags removed). Accepts a list or a string."""
    if command is None:
        return None, []
    words = command.split() if isinstance(command, str) else list(command)
    kept = [w for w in words if w not in STATIC_RUNTIME_FLAGS]
    removed = [w for w in words if w in STATIC_RUNTIME_FLAGS]
    if isinstance(command, str):
        return (" ".join(kept) if removed else command), removed
    return kept, removed


_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


def elf_needed(path) -> list[str] | None:
    """The DT_NEEDED names of a 64-bit little-endian ELF shared object (the libraries it asks the loader for), or
    None when the file is not one (another platform's format)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # ELFCLASS64, little-endian
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = []
    for offset in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab is None:
        return []
    base = next((off + strtab - vaddr for vaddr, off, size in loads if vaddr <= strtab < vaddr + size), None)
    if base is None:
        raise ValueError(f"{path}: the dynamic string table lies outside every loaded segment")
    names = []
    for tag, value in entries:
        if tag == _DT_NEEDED:
            end = data.index(b"\0", base + value)
            names.append(data[base + value:end].decode())
    return names


def static_runtime_problem(path) -> str | None:
    """Why the linked extension at `path` would crash on its first C++ error message, or None."""
    needed = elf_needed(path)
    if needed is None or any(name.startswith("libstdc++.so") for name in needed):
        return None
    return (f"{path} does not load the shared libstdc++ (it needs only: {', '.join(needed) or 'nothing'}), so it "
            f"carries a static copy: with torch's shared copy in the same process, fastvae's first error message "
            f"would crash it. The link added it despite setup.py removing -static-libstdc++ from the link command: "
            f"look for it in LDFLAGS, CXXFLAGS or your compiler's specs, remove it, and rebuild.")
