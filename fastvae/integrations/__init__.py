"""Adapters that run fastvae's latent diagnostics (`fastvae.diagnostics`) inside other training frameworks.

`fastvae.integrations.lightning.LatentDiagnosticsCallback`: a Lightning callback (needs `pip install
fastvae[lightning]`). Each adapter is imported only when asked for, so fastvae never needs the framework itself.
"""
from __future__ import annotations

import importlib

_LAZY_EXPORTS = {"LatentDiagnosticsCallback": "fastvae.integrations.lightning"}


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvae.integrations' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_EXPORTS))
