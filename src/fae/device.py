"""Device selection, shared by training, prediction and brain extraction."""

from __future__ import annotations

import torch

from fae.errors import FaeInputError


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks the GPU when there is one, else the CPU; a missing GPU is one error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FaeInputError(None, f"device {device!r} requested but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise FaeInputError(
            None, f"unknown device {device!r}: use auto, cpu, cuda or cuda:N"
        ) from None
