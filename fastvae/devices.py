"""The one check of a device name given by a user (CLI --device, Trainer(device=...), load_model)."""
from __future__ import annotations

import torch


def resolve_device(name) -> torch.device:
    """torch.device(name), or a ValueError that says what is wrong and what to give instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r}: expected cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} asked for, but this torch has no usable CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(name)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(name)!r}: expected cpu or cuda[:N]")
    return device
