"""fastvae: text VAEs that do not collapse, trained fast.

Layers: `fastvae._C` (compiled C++/CUDA core), `fastvae.kernels` (Triton), `fastvae.ops`
(bindings of the compiled ops), `fastvae.backend` (which implementation runs).
"""
__version__ = "0.1.0"

from . import backend  # noqa: E402,F401
