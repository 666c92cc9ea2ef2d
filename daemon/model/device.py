"""Choosing the torch device the daemon and the demo run on."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The device asked for is not there; the message says what to use instead."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → cuda, then mps, then cpu; anything else is taken as given (and checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cuda, mps or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but this torch build sees no CUDA GPU; "
                          "use --device cpu or install a CUDA build of torch")
    if dev.type == "mps" and not _mps_available():
        raise DeviceError("--device mps was asked for but this machine has no Apple GPU that torch "
                          "can use; use --device cpu")
    return dev


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{dev.index or 0} ({torch.cuda.get_device_name(dev.index or 0)})"
    return dev.type


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
