"""Modules for users who prefer nn.Module over functions.

Names resolve lazily from their own files (one op or layer per file), so importing
`fastvae.nn` stays cheap and one missing optional piece does not hide the others.
"""
import importlib

_EXPORTS = {
    "GaussianLatent": ".latent",
    "ELBOLoss": ".latent",
    "LSTMDecoder": ".decoder",
    "Dropout": ".dropout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'fastvae.nn' has no attribute {name!r}")


def __dir__():
    return __all__
