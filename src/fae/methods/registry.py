"""Method names → classes, imported lazily (so ``fae --help`` stays fast and imports stay acyclic).

To add a method: write a subclass of :class:`fae.methods.base.AnomalyMethod` in its own module
and add its name here.
"""

from __future__ import annotations

import importlib

from fae.errors import FaeInputError

METHODS = {
    "random": "fae.methods.simple:RandomMaps",
    "threshold": "fae.methods.simple:Threshold",
    "bm": "fae.methods.simple:BenchmarkMeanStd",
    "ae-mse": "fae.methods.autoencoders:AEMSE",
    "ae-ssim": "fae.methods.autoencoders:AESSIM",
    "vae": "fae.methods.autoencoders:VAE",
    "fanogan": "fae.methods.fanogan:FAnoGAN",
    "dfr": "fae.methods.dfr:DFR",
    "fae": "fae.model:FAE",
}


def method_class(name: str) -> type:
    """The class of method ``name``; a clear error for unknown names."""
    if name not in METHODS:
        raise FaeInputError(None, f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)
