"""What every anomaly-localisation method shares: a scikit-learn-style estimator around a module.

A method is a subclass of :class:`AnomalyMethod` with a ``name``, a ``config_class`` (a dataclass
of hyper-parameters, derived from :class:`~fae.config.TrainingConfig`) and ``build()``, which
returns a pure ``nn.Module`` mapping (N, 1, H, W) slices in [0, 1] to (N, 1, H, W) anomaly maps.
Learned methods give that module

- ``features(x)``: what the module learns to reconstruct (the slice itself, or frozen CNN
  features), computed without gradients;
- ``loss(features)``: the training objective of one batch;
- ``trainable_parameters()`` and ``cache_features`` (whether ``features`` is a fixed function of
  the slice, so it can be computed once).

Methods that learn no weights set ``learns = False`` and may override :meth:`fit_statistics`;
methods whose maps were checked to agree in bf16 with fp32 set ``bf16_validated = True``, so that
``precision="auto"`` uses bf16 for them (:mod:`fae.runtime`).
What every method shares goes through this class: ``fit`` and ``resume`` drive the training
loop of :mod:`fae.train` (exact resume), and prediction, calibration, evaluation and
``weights_only`` checkpoints are written once, here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fae.calibration import calibrate_thresholds
from fae.checkpoint import load_checkpoint, save_checkpoint
from fae.config import TrainingConfig
from fae.data.preprocess import PrepConfig
from fae.data.slices import SliceSet
from fae.device import resolve_device
from fae.errors import FaeInputError
from fae.evaluation import evaluate_maps, top_fraction_scores
from fae.io import atomic_path
from fae.runtime import autocast, prepare_module, resolve_precision, tune_allocator
from fae.train import TrainState, train

LOG_COLUMNS = ("step", "loss", "val_loss", "seconds")


class AnomalyMethod:
    """Hyper-parameters go to ``__init__``; ``fit`` sets the learned state (``model_``,
    ``step_``, and ``calibration_``: thresholds from the healthy validation slices).

    ``params`` are fields of the method's ``config_class``; ``prep`` is how slices were
    prepared, stored with the model so that prediction repeats it.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[TrainingConfig]] = TrainingConfig
    learns: ClassVar[bool] = True  # False: no gradient training (fit_statistics only)
    bf16_validated: ClassVar[bool] = False

    def __init__(
        self,
        *,
        prep: PrepConfig | None = None,
        device: str = "auto",
        progress: bool = True,
        **params,
    ) -> None:
        self.config = self.config_class.from_dict(params)
        self.prep = prep or PrepConfig()
        self.device = device
        self.progress = progress
        self.map_precision_override: str | None = None  # set by load(precision=...)
        self.meta: dict = {}

    def build(self, load_weights: bool = True) -> nn.Module:
        """A fresh, untrained module for this config (``fit`` seeds torch first);
        ``load_weights=False`` skips loading pretrained weights (when a checkpoint will provide
        them)."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Raise now what ``fit`` would raise late (e.g. missing pretrained weights)."""
        self.build()

    def fit_statistics(self, images: torch.Tensor) -> None:
        """Set a non-learning module's state from (N, 1, S, S) healthy slices (default: none)."""

    # --- learning -------------------------------------------------------------------------

    def fit(
        self,
        train_slices: SliceSet | np.ndarray,
        val_slices: SliceSet | np.ndarray | None = None,
        run_dir: Path | None = None,
    ):
        """Train on healthy slices ((N, S, S) images or a :class:`SliceSet`); returns ``self``.

        With ``run_dir`` it writes ``config.json``, ``train_log.csv`` and ``checkpoint.pt``
        (every ``checkpoint_every`` steps and at the end); :meth:`resume` continues such a run.
        The healthy ``val_slices`` (else the training slices) calibrate the thresholds.
        """
        torch.manual_seed(self.config.seed)  # the initial weights depend on the seed only
        self.model_ = self.build()
        return self._train(train_slices, val_slices, run_dir, resume=None)

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        train_slices,
        val_slices=None,
        progress: bool = True,
        device: str = "auto",
    ):
        """Continue an interrupted run from ``run_dir/checkpoint.pt`` to its configured steps."""
        payload = load_checkpoint(run_dir / "checkpoint.pt")
        found = _class_of(payload, run_dir / "checkpoint.pt")
        est = found._from_payload(payload, device=device, progress=progress)
        if "train_state" not in payload:
            raise FaeInputError(run_dir / "checkpoint.pt", "holds no training state to resume")
        return est._train(train_slices, val_slices, run_dir, resume=payload["train_state"])

    def _train(self, train_slices, val_slices, run_dir: Path | None, resume: dict | None):
        images = as_slice_tensor(train_slices)
        if len(images) == 0:
            raise FaeInputError(None, "no training slices")
        val = as_slice_tensor(val_slices) if val_slices is not None else None
        device = resolve_device(self.device)
        if resume is None or "precision" not in self.meta:  # a resumed run keeps its arithmetic
            self.meta["precision"] = resolve_precision(
                self.config.precision, device, self.bf16_validated
            )
        log_path = run_dir / "train_log.csv" if run_dir else None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run_dir / "config.json", self._describe())
            _start_log(log_path, resume["step"] if resume else 0)

        def checkpoint(state: TrainState) -> None:
            self.step_ = state.step
            if run_dir is not None:
                save_checkpoint(self._payload(state), run_dir / "checkpoint.pt")

        def log(row: dict) -> None:
            if log_path is not None:
                with log_path.open("a", newline="") as fh:
                    csv.DictWriter(fh, LOG_COLUMNS).writerow(row)

        if self.learns:
            state = train(
                self.model_,
                self.config,
                images,
                val,
                device,
                resume,
                checkpoint,
                log,
                self.progress,
                self.meta["precision"],
            )
            self.step_ = state.step
        else:
            self.fit_statistics(images)
            state, self.step_ = None, 0
        self.model_.eval()
        finished_before = resume is not None and int(resume["step"]) >= self.config.steps
        if finished_before and hasattr(self, "calibration_"):
            return self
        has_val = val_slices is not None and len(val_slices) > 0
        healthy = val_slices if has_val else train_slices
        if isinstance(healthy, SliceSet):  # thresholds come from healthy slices only
            healthy = healthy.lesion_free()
        self.calibrate(healthy, "validation" if has_val else "train")
        if run_dir is not None:
            save_checkpoint(self._payload(state), run_dir / "checkpoint.pt")
        return self

    def calibrate(self, slices: SliceSet | np.ndarray, source: str = "healthy slices") -> dict:
        """Set ``calibration_``: pixel and slice thresholds at the calibrated false-positive
        rates (see :mod:`fae.calibration`), from healthy slices; returns it."""
        images, masks = _images_and_masks(slices)
        maps = self.predict(images, masks)
        self.calibration_ = calibrate_thresholds(
            maps, masks, self.slice_scores(maps, masks), source
        )
        return self.calibration_

    # --- prediction -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, images: SliceSet | np.ndarray, masks: np.ndarray | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """(N, S, S) slices in [0, 1] → (N, S, S) float32 anomaly maps, 0 outside ``masks``."""
        self._check_fitted()
        if isinstance(images, SliceSet) or masks is None:
            images, masks = _images_and_masks(images)
        device = resolve_device(self.device)
        precision = self.map_precision(device)
        tune_allocator()
        model = prepare_module(self.model_, precision, device).eval()
        out = np.zeros(images.shape, np.float32)
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="predicting", unit="batch", disable=not self.progress):
            x = torch.from_numpy(
                np.ascontiguousarray(images[start : start + batch_size], np.float32)
            )
            with autocast(precision, device):
                maps = model(x[:, None].to(device))
            out[start : start + len(x)] = maps[:, 0].float().cpu().numpy()
        return np.where(masks, out, 0.0).astype(np.float32)

    def map_precision(self, device: torch.device) -> str:
        """The arithmetic of maps: the override given to :meth:`load`, else the run's own."""
        if self.map_precision_override is not None:
            return resolve_precision(self.map_precision_override, device, self.bf16_validated)
        if "precision" in self.meta:
            return self.meta["precision"]
        return resolve_precision(self.config.precision, device, self.bf16_validated)

    def slice_scores(self, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Slice anomaly scores from maps: top-10 % mean inside the brain, or the maximum."""
        return top_fraction_scores(maps, masks, 0.1 if self.config.slice_score == "top10" else 0.0)

    def evaluate(self, slices: SliceSet, maps: np.ndarray | None = None) -> tuple[dict, list[dict]]:
        """All metrics on labelled slices: (summary, per-subject rows)."""
        maps = self.predict(slices) if maps is None else maps
        return evaluate_maps(slices, maps, self.slice_scores(maps, slices.masks))

    def score(self, slices: SliceSet) -> float:
        """Pixel-wise average precision on labelled slices (higher is better)."""
        return self.evaluate(slices)[0]["pixel_ap"]

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the trained model (no optimiser state) to ``path``."""
        self._check_fitted()
        return save_checkpoint(self._payload(None), Path(path))

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "auto",
        progress: bool = True,
        precision: str | None = None,
    ):
        """A trained method from a checkpoint file (or a run folder holding ``checkpoint.pt``);
        the class is the one the checkpoint names. ``precision`` overrides the run's for maps."""
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoint.pt"
        payload = load_checkpoint(path)
        found = _class_of(payload, path)
        if not issubclass(found, cls):
            raise FaeInputError(path, f"holds a {found.name!r} run, not {cls.name!r}")
        est = found._from_payload(payload, device=device, progress=progress, source=path)
        est.map_precision_override = precision
        return est

    @classmethod
    def _from_payload(
        cls, payload: dict, device: str = "auto", progress: bool = True, source: Path | None = None
    ):
        try:
            prep = PrepConfig.from_dict(payload["prep"])
        except FaeInputError as err:
            raise FaeInputError(source, err.problem) from None
        try:
            # runs from before the precision setting were all trained in fp32
            config = {"precision": "fp32", **payload["config"]}
            est = cls(prep=prep, device=device, progress=progress, **config)
            est.meta = dict(payload.get("meta", {}))
            est.model_ = est.build(load_weights=False)  # the checkpoint holds every weight
            est._load_state(payload["model"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise FaeInputError(
                source, f"checkpoint does not match this version of fae ({err})"
            ) from None
        est.step_ = int(payload.get("step", 0))
        if "calibration" in payload:
            est.calibration_ = payload["calibration"]
        est.model_.eval()
        return est

    def _load_state(self, state: dict) -> None:
        self.model_.load_state_dict(state)

    def _payload(self, state: TrainState | None) -> dict:
        payload = {
            "kind": self.name,
            "config": self.config.to_dict(),
            "prep": self.prep.to_dict(),
            "meta": self.meta,
            "step": getattr(self, "step_", 0) if state is None else state.step,
            "model": self.model_.state_dict(),
        }
        if hasattr(self, "calibration_"):
            payload["calibration"] = self.calibration_
        if state is not None:
            payload["train_state"] = state.state_dict()
        return payload

    def _describe(self) -> dict:
        return {
            "method": self.name,
            "model": self.config.to_dict(),
            "prep": self.prep.to_dict(),
            **self.meta,
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call fit() or load()"
            )


def load_method(
    path: Path, device: str = "auto", progress: bool = True, precision: str | None = None
) -> AnomalyMethod:
    """Any trained method from its checkpoint file or run folder (``precision``: see
    :meth:`AnomalyMethod.map_precision`)."""
    return AnomalyMethod.load(path, device=device, progress=progress, precision=precision)


def _class_of(payload: dict, path: Path) -> type[AnomalyMethod]:
    from fae.methods.registry import METHODS, method_class

    kind = payload.get("kind")
    if kind not in METHODS:
        raise FaeInputError(path, f"checkpoint of unknown method {kind!r}")
    return method_class(kind)


def _images_and_masks(slices: SliceSet | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images, brain masks) of a SliceSet, or of bare images (brain = non-zero pixels)."""
    if isinstance(slices, SliceSet):
        return slices.images, slices.masks
    images = np.asarray(slices)
    return images, images > 0


def as_slice_tensor(slices: SliceSet | np.ndarray) -> torch.Tensor:
    """(N, S, S) slices (array or :class:`SliceSet`) → a (N, 1, S, S) float32 tensor."""
    images = slices.images if isinstance(slices, SliceSet) else np.asarray(slices)
    return torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _start_log(path: Path, keep_until: int) -> None:
    """A fresh log with its header, or (on resume) the old one cut back to ``keep_until``."""
    rows = []
    if keep_until and path.exists():
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                try:  # a killed process may have left half a line
                    if int(row["step"]) <= keep_until:
                        rows.append(row)
                except (TypeError, ValueError):
                    continue
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
