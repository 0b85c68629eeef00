"""The files a run is kept in: ``checkpoint.pt`` (loaded with ``weights_only=True``: tensors and
plain data only) and ``config.json`` (the same record, readable by people).

Both carry the format version and the library versions that wrote them; what the record holds
is defined by :class:`fae.methods.base.AnomalyMethod`, the only reader and writer.
"""

from __future__ import annotations

import json
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

# 2 (fae 0.2): method, config, prep, meta in both files, state_dict and the rest in the checkpoint;
# 1 (fae 0.1): kind, model. Bump it whenever a saved run would load but behave differently.
FORMAT = 2


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


def save_config(record: dict, path: Path) -> Path:
    """Write ``record`` (plus format and versions) atomically as JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "versions": versions(), **record}, indent=2))
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
    """Read a checkpoint safely (``weights_only=True``); bad files, and checkpoints of another
    format version, raise one :class:`FaeInputError`."""
    if not path.is_file():
        raise FaeInputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise FaeInputError(
            path, f"not a readable fae checkpoint ({' '.join(str(err).split())[:200]})"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), int):
        raise FaeInputError(path, "not a fae checkpoint")
    if payload["format"] != FORMAT:
        written = payload.get("versions", {}).get("fae", "an unknown version")
        raise FaeInputError(
            path,
            f"checkpoint format {payload['format']} (written by fae {written}); this fae "
            f"{__version__} reads format {FORMAT}: train the run again, or use fae {written}",
        )
    return payload
