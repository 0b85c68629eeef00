"""The estimator every method shares, in the style of scikit-learn, and the persisted format.

A method is a folder in :mod:`fae.methods` with a config (a dataclass derived from
:class:`~fae.config.TrainingConfig`), a pure ``nn.Module`` (a :class:`~fae.nn.module.MapModule`,
(N, 1, H, W) slices in [0, 1] → (N, 1, H, W) anomaly maps) and a subclass of
:class:`AnomalyMethod` that sets ``name`` and ``config_class`` and implements ``build()``; its
name goes into :mod:`fae.methods.registry`. Hooks for what differs between methods:

- ``learns = False`` with :meth:`~AnomalyMethod.fit_statistics` for methods without gradient
  training; ``bf16_validated = True`` for methods whose maps were checked to agree in bf16 with
  fp32 (``precision="auto"`` then uses bf16 where the hardware has it, :mod:`fae.runtime`);
- :meth:`~AnomalyMethod.configure_from_data`: settings that depend on the training data;
- :meth:`~AnomalyMethod.settings_for_steps`: how a step budget maps onto the method's settings.

A run is saved as ``checkpoint.pt`` (loaded with ``weights_only=True``) and ``config.json``
with the same keys — ``format``, ``method``, ``config``, ``prep``, ``meta`` — the checkpoint
adding ``step``, ``state_dict``, ``calibration`` and ``train_state``; only this class reads or
writes them (the file format itself: :mod:`fae.checkpoint`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from fae import distributed
from fae.calibration import calibrate_thresholds, display_range, thresholds_at
from fae.checkpoint import load_checkpoint, save_checkpoint, save_config
from fae.config import TrainingConfig
from fae.data.preprocess import PrepConfig
from fae.data.slices import SliceSet
from fae.device import resolve_device
from fae.errors import FaeInputError
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.postprocess import finish_maps
from fae.runtime import BATCH_SIZE, batched, prepare_module, resolve_precision, tune_allocator
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
    # why the map cannot be exported to ONNX (fae export), where it cannot; "" where it can
    export_problem: ClassVar[str] = ""

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
        self._train_state: dict | None = None  # from a loaded checkpoint, to continue training

    # --- hooks ----------------------------------------------------------------------------

    def build(self, load_weights: bool = True) -> nn.Module:
        """A fresh, untrained module for this config (``fit`` seeds torch first);
        ``load_weights=False`` skips loading pretrained weights (when a checkpoint will provide
        them)."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Raise now what ``fit`` would raise late (e.g. missing pretrained weights)."""
        self.build()

    def configure_from_data(self, train_slices: SliceSet | np.ndarray) -> None:
        """Settle settings that depend on the training data, before ``build`` (default: none)."""

    def fit_statistics(self, images: torch.Tensor) -> None:
        """Set a non-learning module's state from (N, 1, S, S) healthy slices (default: none)."""

    def fit_healthy(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Fit map statistics on (N, S, S) healthy slices and brain masks, before the thresholds
        are calibrated on them (default: none)."""

    @classmethod
    def preset(cls, name: str, modality: str | None = None) -> dict:
        """The settings of the named preset for ``modality`` (default: the method has none)."""
        raise FaeInputError(None, f"{cls.name!r} has no preset {name!r}")

    @classmethod
    def settings_for_steps(cls, steps: int) -> dict:
        """The settings that give a training budget of ``steps`` (none for non-learning
        methods)."""
        return {"steps": steps} if cls.learns else {}

    # --- learning -------------------------------------------------------------------------

    def fit(
        self,
        train_slices: SliceSet | np.ndarray,
        val_slices: SliceSet | np.ndarray | None = None,
        run_dir: Path | None = None,
        init: AnomalyMethod | None = None,
    ):
        """Train on healthy slices ((N, S, S) images or a :class:`SliceSet`); returns ``self``.

        With ``run_dir`` it writes ``config.json``, ``train_log.csv`` and ``checkpoint.pt``
        (every ``checkpoint_every`` steps and at the end); :meth:`resume` continues such a run.
        ``val_slices`` (else the training slices) calibrate the thresholds: their lesion-free
        slices, mapped as parts of their whole scans (see :meth:`calibrate`); the same
        lesion-free slices give the validation loss.
        ``init``: a trained method of the same architecture whose weights (and fitted feature
        statistics) training starts from, with fresh optimisers: fine-tuning, e.g. on a new
        site's healthy scans.
        """
        if init is not None and not self.learns:
            raise FaeInputError(
                None, f"{self.name!r} learns nothing: there is no training to start"
            )
        self.configure_from_data(train_slices)
        torch.manual_seed(self.config.seed)  # the initial weights depend on the seed only
        self.model_ = self.build(load_weights=init is None)
        if init is not None:
            try:  # fitted map statistics (the fusion's) are refitted at calibration anyway
                missing, unexpected = self.model_.load_state_dict(
                    init.model_.state_dict(), strict=False
                )
            except RuntimeError as err:
                raise FaeInputError(
                    None, f"the run to start from has another architecture ({_brief(err)})"
                ) from None
            other = [k for k in missing + unexpected if "_tail." not in k]
            if other:
                raise FaeInputError(
                    None, f"the run to start from has another architecture ({other[0]}...)"
                )
        self.meta["precision"] = resolve_precision(
            self.config.precision, resolve_device(self.device), self.bf16_validated
        )
        return self._train(train_slices, val_slices, run_dir, None, fit_features=init is None)

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        train_slices,
        val_slices=None,
        progress: bool = True,
        device: str = "auto",
        steps: int | None = None,
    ):
        """Continue the run in ``run_dir`` to its configured steps, or to ``steps`` (which
        extends a finished run): the same weights as one uninterrupted run of that length."""
        est = cls.load(run_dir, device=device, progress=progress)
        if steps is not None:
            est.extend(steps)
        return est.continue_fit(train_slices, val_slices, run_dir)

    def continue_fit(self, train_slices, val_slices=None, run_dir: Path | None = None):
        """Continue a loaded run's training to its configured steps, then calibrate."""
        if self.learns and self._train_state is None:
            raise FaeInputError(run_dir, "the run holds no training state to continue training")
        return self._train(train_slices, val_slices, run_dir, resume=self._train_state)

    def extend(self, steps: int) -> None:
        """Set the training budget to ``steps`` (at least the steps already trained); every
        other setting stays (f-AnoGAN's GAN phase included). A run that will train further
        drops its thresholds: they belong to the shorter model, and training ends with new ones.
        """
        if not self.learns:
            raise FaeInputError(
                None, f"{self.name!r} learns nothing: there is no training to extend"
            )
        if steps < self.step_:
            raise FaeInputError(
                None, f"the run has trained {self.step_} steps already, more than {steps} asked for"
            )
        self.config = replace(self.config, steps=steps)
        if steps > self.step_ and hasattr(self, "calibration_"):
            del self.calibration_

    @property
    def is_finished(self) -> bool:
        """Trained to its configured steps and calibrated."""
        trained = not self.learns or getattr(self, "step_", 0) >= self.config.steps
        return trained and hasattr(self, "calibration_")

    def _train(
        self,
        train_slices,
        val_slices,
        run_dir: Path | None,
        resume: dict | None,
        fit_features: bool = True,
    ):
        images = as_slice_tensor(train_slices)
        if len(images) == 0:
            raise FaeInputError(None, "no training slices")
        healthy_val = _lesion_free(val_slices) if val_slices is not None else None
        val = as_slice_tensor(healthy_val) if healthy_val is not None else None
        if self.learns:  # under torchrun: refused before anything is written
            distributed.check_batch(min(self.config.batch_size, len(images)))
        record = _RunRecord(self, run_dir, resume["step"] if resume else 0)
        if self.learns:
            state = train(
                self.model_,
                self.config,
                images,
                val,
                resolve_device(self.device),
                resume,
                record.checkpoint,
                record.log,
                self.progress,
                self.meta["precision"],
                loss_weights(train_slices, self.config),
                fit_features,
            )
            self.step_ = state.step
            self._train_state = state.state_dict()
        else:
            self.fit_statistics(images)
            self.step_ = 0
        self.model_.eval()
        has_val = healthy_val is not None and len(healthy_val) > 0
        self.calibrate(
            val_slices if has_val else train_slices, "validation" if has_val else "train"
        )
        record.final()
        return self

    def calibrate(self, slices: SliceSet | np.ndarray, source: str = "healthy slices") -> dict:
        """Set ``calibration_``: pixel and slice thresholds at the calibrated false-positive
        rates (see :mod:`fae.calibration`), from the lesion-free slices of ``slices`` (bare
        arrays: all healthy); returns it. The maps are made of ``slices`` as given, whole
        scans where they are whole, so that ``volume_center`` and ``slice_median`` see each
        scan as prediction will; only then are the lesion slices left out."""
        images, masks = _images_and_masks(slices)
        healthy = (
            ~slices.slice_labels if isinstance(slices, SliceSet) else np.ones(len(images), bool)
        )
        self.fit_healthy(images[healthy], masks[healthy])
        maps = self.predict(slices)[healthy]
        masks = masks[healthy]
        self.calibration_ = calibrate_thresholds(
            maps, masks, self.slice_scores(maps, masks), source
        )
        return self.calibration_

    def thresholds(self, fpr: float = 0.05) -> tuple[float, float]:
        """The calibrated (pixel, slice) thresholds at false-positive rate ``fpr``."""
        return thresholds_at(getattr(self, "calibration_", None), fpr)

    def display_range(self, fpr: float = 0.05) -> tuple[float, float]:
        """The run's colour scale for every map picture (:func:`fae.calibration.display_range`)."""
        return display_range(getattr(self, "calibration_", None), fpr)

    # --- prediction -----------------------------------------------------------------------

    def predict(
        self,
        images: SliceSet | np.ndarray,
        masks: np.ndarray | None = None,
        batch_size: int = BATCH_SIZE,
        volume: np.ndarray | None = None,
        slice_index: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, S, S) slices in [0, 1] → (N, S, S) float32 anomaly maps, 0 outside ``masks``.

        With ``volume_center`` and ``slice_median``, scans and neighbouring slices are told
        apart by ``volume`` and ``slice_index`` ((N,) each; a SliceSet carries both); bare
        arrays without them are one volume's consecutive slices."""
        self._check_fitted()
        if isinstance(images, SliceSet):
            volume, slice_index = images.subject, images.slice_index
        if isinstance(images, SliceSet) or masks is None:
            images, masks = _images_and_masks(images)
        maps = self.maps(images, masks, self.model_, batch_size)
        weight = self.map_weight(images, masks, batch_size)
        c = self.config
        return finish_maps(
            maps, masks, c.volume_center, c.slice_median, volume, slice_index, weight
        )

    def export_module(self) -> tuple[nn.Module, list[str]]:
        """The fp32 module that ``fae export`` writes, and the names of its outputs: the maps,
        and for a method with :meth:`map_weight` the weights too."""
        return self.model_.float().eval(), ["maps"]

    def map_weight(
        self, images: np.ndarray, masks: np.ndarray, batch_size: int = BATCH_SIZE
    ) -> np.ndarray | None:
        """(N, S, S) per-pixel weights of the centred maps (:func:`fae.postprocess.
        finish_maps`), or None: no weight (every method but FAE with ``dark_weight``)."""
        return None

    def maps(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        fn: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = BATCH_SIZE,
    ) -> np.ndarray:
        """``fn`` ((N, 1, S, S) → (N, 1, S, S), a part of the module) over (N, S, S) slices, in
        batches at the run's precision; 0 outside ``masks``."""
        device = resolve_device(self.device)
        precision = self.map_precision(device)
        tune_allocator()
        prepare_module(self.model_, precision, device).eval()
        out = np.zeros(images.shape, np.float32)
        passes = batched(
            lambda x: fn(x[:, None]),
            images,
            device,
            precision,
            batch_size,
            "predicting",
            self.progress,
        )
        for part, maps in passes:
            out[part] = maps[:, 0].float().cpu().numpy()
        return np.where(masks, out, 0.0).astype(np.float32)

    def map_precision(self, device: torch.device) -> str:
        """The arithmetic of maps: the override given to :meth:`load`, else the run's own."""
        if self.map_precision_override is not None:
            return resolve_precision(self.map_precision_override, device, self.bf16_validated)
        if "precision" in self.meta:
            return self.meta["precision"]
        return resolve_precision(self.config.precision, device, self.bf16_validated)

    def slice_scores(self, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Slice anomaly scores of maps with this run's ``slice_score``."""
        return slice_scores(maps, masks, self.config.slice_score)

    def evaluate(self, slices: SliceSet, maps: np.ndarray | None = None) -> tuple[dict, list[dict]]:
        """All metrics on labelled slices: (summary, per-subject rows)."""
        maps = self.predict(slices) if maps is None else maps
        return evaluate_maps(slices, maps, self.slice_scores(maps, slices.masks))

    # --- persistence ----------------------------------------------------------------------

    def save_run(self, run_dir: Path) -> None:
        """Write the run's ``checkpoint.pt`` (with its training state) and ``config.json``."""
        self.save(run_dir / "checkpoint.pt", training_state=True)
        save_config(self.describe(), run_dir / "config.json")

    def save(self, path: Path, training_state: bool = False) -> Path:
        """Write the trained model to ``path``; with ``training_state`` also what continuing
        its training needs (optimisers, sampler, random state)."""
        self._check_fitted()
        payload = self._payload()
        if training_state and self._train_state is not None:
            payload["train_state"] = self._train_state
        return save_checkpoint(payload, Path(path))

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
        from fae.methods.registry import method_class

        resolve_device(device)  # an unknown or missing device: one error before any work
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoint.pt"
        payload = load_checkpoint(path)
        found = method_class(payload["method"], path)
        if not issubclass(found, cls):
            raise FaeInputError(path, f"holds a {found.name!r} run, not {cls.name!r}")
        try:
            prep = PrepConfig.from_dict(payload["prep"])
            est = found(prep=prep, device=device, progress=progress, **payload["config"])
            est.meta = dict(payload["meta"])
            est.model_ = est.build(load_weights=False)  # the checkpoint holds every weight
            est.model_.load_state_dict(payload["state_dict"])
        except FaeInputError as err:
            raise FaeInputError(path, err.problem) from None
        except (KeyError, TypeError, RuntimeError) as err:
            raise FaeInputError(
                path, f"checkpoint does not match this version of fae ({err})"
            ) from None
        est.step_ = int(payload["step"])
        if "calibration" in payload:
            est.calibration_ = payload["calibration"]
        est._train_state = payload.get("train_state")
        est.map_precision_override = precision
        est.model_.eval()
        return est

    def describe(self) -> dict:
        """The run's record, as ``config.json`` holds it: method, config, preprocessing, meta."""
        return {
            "method": self.name,
            "config": self.config.to_dict(),
            "prep": self.prep.to_dict(),
            "meta": self.meta,
        }

    def _payload(self, state: TrainState | None = None) -> dict:
        payload = {
            **self.describe(),
            "step": getattr(self, "step_", 0) if state is None else state.step,
            "state_dict": self.model_.state_dict(),
        }
        if hasattr(self, "calibration_"):
            payload["calibration"] = self.calibration_
        if state is not None:
            payload["train_state"] = state.state_dict()
        return payload

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


class _RunRecord:
    """What training writes into a run folder: ``config.json`` at the start, ``train_log.csv``
    as it goes (cut back to the resumed step), ``checkpoint.pt`` periodically and at the end;
    under ``torchrun`` only rank 0 writes."""

    def __init__(self, est: AnomalyMethod, run_dir: Path | None, start_step: int) -> None:
        self.est = est
        self.run_dir = run_dir if distributed.is_main() else None  # rank 0 writes the run
        if self.run_dir is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(est.describe(), run_dir / "config.json")
        _start_log(run_dir / "train_log.csv", start_step)

    def checkpoint(self, state: TrainState) -> None:
        self.est.step_ = state.step
        if self.run_dir is not None:
            save_checkpoint(self.est._payload(state), self.run_dir / "checkpoint.pt")

    def log(self, row: dict) -> None:
        if self.run_dir is not None:
            with (self.run_dir / "train_log.csv").open("a", newline="") as fh:
                csv.DictWriter(fh, LOG_COLUMNS).writerow(row)

    def final(self) -> None:
        """The trained, calibrated run (with its training state, so it can be extended)."""
        if self.run_dir is not None:
            self.est.save_run(self.run_dir)


def _brief(error: Exception) -> str:
    return " ".join(str(error).split())[:160]


def loss_weights(slices: SliceSet | np.ndarray, config: TrainingConfig) -> torch.Tensor | None:
    """(N, 1, S, S) bool: True where a training pixel counts in the loss, False on each lesion
    grown by ``lesion_margin`` pixels in its slice (``train_slices = "masked"``); else ``None``."""
    if config.train_slices != "masked":
        return None
    if not isinstance(slices, SliceSet):
        raise FaeInputError(None, 'train_slices "masked" needs slices with lesion masks')
    grown = slices.segs.astype(bool)
    if config.lesion_margin:
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[1] = ndimage.generate_binary_structure(2, 1)
        grown = ndimage.binary_dilation(grown, in_plane, iterations=config.lesion_margin)
    return torch.from_numpy(~grown)[:, None]  # bool: a quarter of the memory of float32


def _lesion_free(slices: SliceSet | np.ndarray) -> SliceSet | np.ndarray:
    """The lesion-free slices of a SliceSet; bare arrays are taken as healthy."""
    return slices.lesion_free() if isinstance(slices, SliceSet) else slices


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
