"""The contract between a method's network and the shared training loop (:mod:`fae.train`).

A :class:`MapModule` maps (N, 1, H, W) slices in [0, 1] to (N, 1, H, W) anomaly maps:

    slice ──features──▶ f ──reconstruct──▶ f̂ ──residual(f, f̂)──▶ (N, C, h, w)
                                                    │ mean over channels, upsampled to H × W
                                                    ▼
                                              anomaly map (N, 1, H, W)

The training objective is by default the mean of the same residual, so loss and map come from
one definition. Methods that reconstruct nothing override :meth:`anomaly_map` instead; methods
that need more than one optimiser and one loss per step (a GAN) override :meth:`training_step`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fae.distributed import global_count


class MapModule(nn.Module):
    """Base class: override ``reconstruct`` and ``residual`` (or ``anomaly_map``)."""

    @property
    def cache_features(self) -> bool:
        """True when ``features`` is a fixed function of the slice, so it is computed once."""
        return True

    @property
    def fits_features(self) -> bool:
        """True when ``features`` has statistics to fit on the training data first
        (:meth:`fit_features`)."""
        return False

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → what the model learns to reconstruct: by default the slice
        itself. Computed without gradients."""
        return x

    def fit_features(self, features: Tensor) -> Tensor:
        """Fit data-dependent feature statistics on the training slices' ``features`` (as
        computed before the fit) and return those features as :meth:`features` now gives them."""
        return features

    def reconstruct(self, features: Tensor) -> Tensor:
        """The model's reconstruction of ``features`` (same shape)."""
        raise NotImplementedError

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        """(N, C, h, w) per-element dissimilarity of features and reconstruction (≥ 0)."""
        raise NotImplementedError

    def loss(self, features: Tensor, weight: Tensor | None = None) -> Tensor:
        """The training objective on one batch: the mean residual (over the pixels where the
        (N, 1, H, W) ``weight`` is 1, when given: see :func:`weighted_mean`)."""
        return weighted_mean(self.residual(features, self.reconstruct(features)), weight)

    def anomaly_map(self, features: Tensor) -> Tensor:
        """(N, C, h, w) features → (N, 1, h, w) map: the residual's mean over channels."""
        return self.residual(features, self.reconstruct(features)).mean(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → (N, 1, H, W) anomaly maps (bilinear, align_corners=True)."""
        small = self.anomaly_map(self.features(x))
        if small.shape[-2:] == x.shape[-2:]:
            return small
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """The optimisers, in the order :meth:`training_step` expects them (default: one Adam)."""
        return [torch.optim.Adam(self.trainable_parameters(), lr=lr)]

    def training_step(
        self,
        features: Tensor,
        optimizers: Sequence[torch.optim.Optimizer],
        step: int,
        weight: Tensor | None = None,
    ) -> float:
        """One optimisation step at ``step`` (0-based) on a batch (with the pixels of its
        slices that count, ``weight``); returns the loss to log."""
        (optimizer,) = optimizers
        loss = self.loss(features, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()


def weighted_mean(residual: Tensor, weight: Tensor | None = None) -> Tensor:
    """The mean of an (N, C, h, w) residual, or its mean over the pixels where the (N, 1, H, W)
    ``weight`` is 1 (e.g. outside lesions); at a coarser h × w a cell counts only when every
    pixel of it does."""
    if weight is None:
        return residual.mean()
    if weight.shape[-2:] != residual.shape[-2:]:
        weight = 1 - F.adaptive_max_pool2d(1 - weight, residual.shape[-2:])
    weight = weight.to(residual.dtype)
    return (residual * weight).sum() / global_count(weight.sum() * residual.shape[1]).clamp_min(1)
