"""The ``fae`` command line: a thin layer over the library that turns bad input into one line.

Each sub-command's parser and handler sit together in one module of this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fae import __version__
from fae.cli import benchmark, data, demo, evaluate, export, predict, report, train
from fae.cli.options import BRAIN_MASK_CHOICES, PRECISION_CHOICES
from fae.errors import FaeInputError
from fae.io import UNWRITABLE

__all__ = ["BRAIN_MASK_CHOICES", "PRECISION_CHOICES", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fae`` console script; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FaeInputError as err:
        print(f"fae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fae: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk or an unwritable folder outside fae's atomic writes
        if err.errno not in UNWRITABLE:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"fae: error: {where}{err.strerror}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per command."""
    p = argparse.ArgumentParser(
        prog="fae",
        description="Unsupervised anomaly localisation in brain MRI (Feature Autoencoders).",
    )
    p.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (data, train, evaluate, predict, report, export, benchmark, demo):
        command.add(sub)
    return p
