"""The one exception type that the command line turns into a one-line error."""

from __future__ import annotations

from pathlib import Path


class FaeInputError(Exception):
    """Bad user input: a file or setting that cannot be used.

    The CLI prints ``error: <path>: <problem>`` and exits with status 2, without a traceback.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
