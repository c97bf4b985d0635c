"""fastvae: text VAEs that do not collapse, trained fast.

Layers: `fastvae._C` (compiled C++/CUDA core), `fastvae.kernels` (Triton), `fastvae.ops`
(bindings of the compiled ops), `fastvae.backend` (which implementation runs).
Python API for training and evaluation (imported lazily, on first use): `fastvae.Trainer`,
`fastvae.evaluate`, `fastvae.LatentDiagnostics` (the papers' latent measurements in any training loop).
"""
__version__ = "0.1.0"

import importlib  # noqa: E402

from . import backend  # noqa: E402,F401

_LAZY_EXPORTS = {
    "Trainer": "fastvae.training.trainer",
    "evaluate": "fastvae.evaluation",
    "LatentDiagnostics": "fastvae.diagnostics",
}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvae' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_EXPORTS))
