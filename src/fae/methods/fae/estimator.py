"""``FAE``: the Structural Feature-Autoencoder as a scikit-learn-style estimator.

Hyper-parameters go to ``__init__`` (:class:`~fae.methods.fae.config.FAEConfig`); ``fit`` sets
the learned state; ``predict`` gives anomaly maps, ``evaluate`` all of the paper's metrics;
``save``/``load`` round-trip through a ``weights_only`` checkpoint. What every method shares is
in :class:`fae.methods.base.AnomalyMethod`.
"""

from __future__ import annotations

import numpy as np
import torch

from fae.data.slices import SliceSet
from fae.errors import FaeInputError
from fae.methods.base import AnomalyMethod
from fae.methods.fae import presets
from fae.methods.fae.config import FAEConfig
from fae.methods.fae.torch_model import MapsAndWeights, StructuralFAE
from fae.postprocess import smooth_inside
from fae.runtime import BATCH_SIZE


class FAE(AnomalyMethod):
    """Structural Feature-Autoencoder (Meissen et al. 2022) with the paper's defaults.

    ``params`` are :class:`~fae.methods.fae.config.FAEConfig` fields (``backbone``, ``steps``,
    ``seed``...).
    """

    name = "fae"
    config_class = FAEConfig
    bf16_validated = True  # maps and LGG metrics checked against fp32 (README, "Speed")

    @classmethod
    def preset(cls, name: str, modality: str | None = None) -> dict:
        """``paper`` or ``best`` (per modality), from :mod:`.presets`."""
        return presets.preset(name, modality)

    def build(self, load_weights: bool = True) -> StructuralFAE:
        c = self.config
        return StructuralFAE(
            c.backbone,
            c.layers,
            c.weights if load_weights else None,
            c.train_batchnorm,
            c.hidden,
            c.dropout,
            c.ssim_window,
            c.ssim_sigma,
            c.standardize_features,
            c.fusion,
            c.dark_weight,
        )

    # settings that change only the map of a trained model or its slice score (see with_maps)
    MAP_SETTINGS = (
        "fusion",
        "dark_weight",
        "dark_smooth",
        "volume_center",
        "slice_median",
        "slice_score",
    )

    @classmethod
    def map_settings(cls, preset: str, modality: str | None = None) -> dict:
        """The map settings of the named preset for ``modality``: the ``changes`` that
        :meth:`with_maps` gives a run trained with other ones."""
        settings = cls.preset(preset, modality)
        return {k: settings[k] for k in cls.MAP_SETTINGS}

    def with_maps(self, healthy: SliceSet, **changes) -> FAE:
        """This trained model with other map settings (``fusion``, ``dark_weight``,
        ``dark_smooth``, ``volume_center``, ``slice_median``, ``slice_score``), refitted and
        calibrated on the lesion-free slices of ``healthy`` (whole scans where possible: see
        :meth:`calibrate`); a new estimator, this one is unchanged. The autoencoder is the
        same: these settings change only the map or the slice score, so they can be tried on a
        run trained without them."""
        self._check_fitted()
        unknown = set(changes) - set(self.MAP_SETTINGS)
        if unknown:
            raise FaeInputError(None, f"not a map setting: {', '.join(sorted(unknown))}")
        params = {**self.config.to_dict(), **changes}
        other = type(self)(prep=self.prep, device=self.device, progress=self.progress, **params)
        other.model_ = other.build(load_weights=False)
        # same architecture; only the healthy tails may be missing or extra (refitted below)
        other.model_.load_state_dict(self.model_.state_dict(), strict=False)
        other.meta, other.step_ = dict(self.meta), self.step_
        other.map_precision_override = self.map_precision_override
        other.calibrate(healthy)
        return other

    def fit_healthy(self, images: np.ndarray, masks: np.ndarray) -> None:
        """With ``fusion``: the healthy distributions of the structural map and of the
        intensity; with ``dark_weight``: that of the negated intensity (its lower tail, of the
        slices smoothed by ``dark_smooth``); from healthy brain pixels."""
        intensity = torch.from_numpy(np.asarray(images, np.float32)[masks])
        if self.config.dark_weight:
            smooth = smooth_inside(images, masks, self.config.dark_smooth)
            self.model_.darkness_tail.fit(-torch.from_numpy(smooth[masks]))
        if self.config.fusion == "none":
            return
        structure = self.maps(images, masks, self.model_.structure)
        self.model_.structure_tail.fit(torch.from_numpy(structure[masks]))
        self.model_.intensity_tail.fit(intensity)

    def export_module(self) -> tuple[torch.nn.Module, list[str]]:
        """With ``dark_weight`` one graph with the maps and their weights (:class:`~fae.methods.
        fae.torch_model.MapsAndWeights`)."""
        module, outputs = super().export_module()
        if self.config.dark_weight:
            return MapsAndWeights(module), [*outputs, "weights"]
        return module, outputs

    def map_weight(
        self, images: np.ndarray, masks: np.ndarray, batch_size: int = BATCH_SIZE
    ) -> np.ndarray | None:
        """With ``dark_weight``: (N, S, S) weights of the centred maps (:meth:`StructuralFAE.
        darkness` of the slices smoothed by ``dark_smooth``), else None."""
        if not self.config.dark_weight:
            return None
        smooth = smooth_inside(images, masks, self.config.dark_smooth)
        return self.maps(smooth, masks, self.model_.darkness, batch_size)
