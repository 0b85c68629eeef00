"""``FAE``: the Structural Feature-Autoencoder as a scikit-learn-style estimator.

Hyper-parameters go to ``__init__`` (:class:`~fae.config.FAEConfig`); ``fit`` sets the learned
state; ``predict`` gives anomaly maps, ``score`` the pixel-wise average precision, ``evaluate``
all of the paper's metrics; ``save``/``load`` round-trip through a ``weights_only`` checkpoint.
The shared machinery is :class:`fae.methods.base.AnomalyMethod`.
"""

from __future__ import annotations

from fae.config import FAEConfig
from fae.device import resolve_device
from fae.methods.base import AnomalyMethod
from fae.nn.fae import StructuralFAE

__all__ = ["FAE", "resolve_device"]


class FAE(AnomalyMethod):
    """Structural Feature-Autoencoder (Meissen et al. 2022) with the paper's defaults.

    ``params`` are :class:`~fae.config.FAEConfig` fields (``backbone``, ``steps``, ``seed``...).
    """

    name = "fae"
    config_class = FAEConfig
    bf16_validated = True  # maps and LGG metrics checked against fp32 (README, "Speed")

    def build(self, load_weights: bool = True) -> StructuralFAE:
        c = self.config
        weights = c.weights if load_weights else None
        return StructuralFAE(
            c.backbone,
            c.layers,
            weights,
            c.train_batchnorm,
            c.hidden,
            c.dropout,
            c.ssim_window,
            c.ssim_sigma,
            c.standardize_features,
        )

    def _load_state(self, state: dict) -> None:
        _load_weights(self.model_, state)


def _load_weights(model: StructuralFAE, state: dict) -> None:
    """Strict loading, except that checkpoints from before feature standardisation existed
    (no ``feature_mean``/``feature_std``) keep the identity statistics they were trained with."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"feature_mean", "feature_std"}:
        raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
