"""Method names → classes, imported lazily (so ``fae --help`` stays fast and imports acyclic).

A new method is one folder in :mod:`fae.methods` and one line here (or, from outside the
package, one call to :func:`register`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fae.errors import FaeInputError

METHODS: dict[str, str | type] = {
    "random": "fae.methods.statistics:RandomMaps",
    "threshold": "fae.methods.statistics:Threshold",
    "bm": "fae.methods.statistics:BenchmarkMeanStd",
    "ae-mse": "fae.methods.ae:AEMSE",
    "ae-ssim": "fae.methods.ae:AESSIM",
    "vae": "fae.methods.vae:VAE",
    "fanogan": "fae.methods.fanogan:FAnoGAN",
    "dfr": "fae.methods.dfr:DFR",
    "fae": "fae.methods.fae:FAE",
}
# The method this package is about: what `fae train` trains by default and what the benchmark
# tests every other method against.
PROPOSED = "fae"


def register(name: str, target: str | type) -> None:
    """Make a method known by ``name``: its class, or ``"module:Class"`` to import lazily."""
    METHODS[name] = target


def method_class(name: str, source: str | Path | None = None) -> type:
    """The class of method ``name``; a clear error (naming ``source``) for unknown names."""
    if name not in METHODS:
        raise FaeInputError(source, f"unknown method {name!r}; known: {', '.join(METHODS)}")
    target = METHODS[name]
    if isinstance(target, type):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
