"""Hyper-parameters every method shares, and reading them from a file.

Each method derives its own config from :class:`TrainingConfig` (in its folder under
:mod:`fae.methods`).

A config can come from a TOML or YAML file (``--config``); command-line flags override it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from fae.errors import FaeInputError

PRECISIONS = ("auto", "fp32", "bf16")  # the arithmetic of training and maps (fae.runtime)
BATCH_SIZE = 64  # slices per batch of a pass without gradients (features, maps, losses)

# slice score → the top fraction of a slice's brain pixels it averages (0: the maximum); the
# score itself is fae.evaluation.slice_scores
SLICE_SCORES = {"top10": 0.1, "top25": 0.25, "max": 0.0}
TRAIN_SLICES = ("lesion-free", "all", "masked")


@dataclass
class TrainingConfig:
    """Training settings every learned method shares (the FAE paper's defaults).

    slice_score: ``"top10"`` (mean of the top 10 % of map values in the brain, the paper),
    ``"top25"`` (of the top 25 %: ``best`` on T1) or ``"max"`` (the 2023 benchmark).
    volume_center: not in the paper: each scan's map minus this quantile (0..1) of its own
    values inside the brain (0: off), so that a scan unusual throughout does not take the
    false-positive budget of the others (:mod:`fae.postprocess`).
    slice_median: not in the paper: each map becomes the pixel-wise median over itself and its
    neighbouring slices in the volume, ``slice_median`` slices in all (1: off; odd), before
    thresholds and scores (:mod:`fae.postprocess`).
    precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (:mod:`fae.runtime`): the arithmetic of
    training and of the run's maps; ``auto`` is bf16 where the method was validated in it and
    the hardware has it, else fp32.
    train_slices: which slices of the training patients a run learns from: ``"lesion-free"``
    (the paper), ``"all"``, or ``"masked"``: every slice, with the lesion grown by
    ``lesion_margin`` pixels left out of the loss.
    """

    lr: float = 2e-4
    batch_size: int = 32
    steps: int = 10_000
    seed: int = 0
    slice_score: str = "top10"
    volume_center: float = 0.0
    slice_median: int = 1
    checkpoint_every: int = 500
    val_every: int = 250
    log_every: int = 25
    precision: str = "auto"
    train_slices: str = "lesion-free"
    lesion_margin: int = 5

    def __post_init__(self) -> None:
        for problem, failed in self.problems().items():
            if failed:
                raise FaeInputError(None, problem)

    def problems(self) -> dict[str, bool]:
        """Problem description → whether it applies; subclasses add their own."""
        return {
            "steps must be at least 1": self.steps < 1,
            "batch_size must be at least 1": self.batch_size < 1,
            "lr must be positive": self.lr <= 0,
            f"slice_score must be one of {tuple(SLICE_SCORES)}": self.slice_score
            not in SLICE_SCORES,
            "volume_center must be a quantile in [0, 1) (0: off)": not 0 <= self.volume_center < 1,
            "slice_median must be an odd number of slices (1: off)": self.slice_median < 1
            or self.slice_median % 2 == 0,
            f"precision must be one of {PRECISIONS}": self.precision not in PRECISIONS,
            f"train_slices must be one of {TRAIN_SLICES}": self.train_slices not in TRAIN_SLICES,
            "lesion_margin must be at least 0": self.lesion_margin < 0,
            "checkpoint_every, val_every and log_every must be at least 1": min(
                self.checkpoint_every, self.val_every, self.log_every
            )
            < 1,
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FaeInputError(source, f"unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as err:  # e.g. YAML reads 2e-4 as a string
            raise FaeInputError(source, f"a setting has the wrong type ({err})") from None


def read_config_file(path: Path) -> dict:
    """Settings from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file, as a flat dict."""
    try:
        text = path.read_text()
    except OSError as err:
        raise FaeInputError(path, f"cannot read config ({err.strerror or err})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise FaeInputError(path, "config must be .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise FaeInputError(path, f"invalid config ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise FaeInputError(path, "config must be a table/mapping of settings")
    return data
