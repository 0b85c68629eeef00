"""Checkpoints that load with ``torch.load(..., weights_only=True)``: tensors and plain data only.

A checkpoint carries the model config, the preprocessing settings, library versions, the
training step, model and optimiser state and the random-number state needed to resume exactly.
"""

from __future__ import annotations

import pickle
import platform
import zipfile
from importlib import metadata
from pathlib import Path, PurePath

import numpy as np
import torch

from fae import __version__
from fae.errors import FaeInputError
from fae.io import atomic_path

FORMAT = 1


def versions() -> dict[str, str]:
    return {
        "fae": __version__,
        "torch": str(torch.__version__),
        "torchvision": metadata.version("torchvision"),  # not imported: 1.3 s
        "python": platform.python_version(),
    }


def save_checkpoint(payload: dict, path: Path) -> Path:
    """Write ``payload`` (plus format and versions) atomically to ``path``; numpy scalars and
    paths become plain numbers and strings, so that ``weights_only`` loading accepts them."""
    with atomic_path(path) as tmp:
        torch.save(_plain({"format": FORMAT, "versions": versions(), **payload}), tmp)
    return path


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, PurePath):
        return str(value)
    return value


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``); bad files raise :class:`FaeInputError`."""
    if not path.is_file():
        raise FaeInputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise FaeInputError(
            path, f"not a readable fae checkpoint ({' '.join(str(err).split())[:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FaeInputError(path, f"not a fae checkpoint of format {FORMAT}")
    return payload
