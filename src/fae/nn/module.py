"""The contract between a method's network and the shared training loop (:mod:`fae.train`).

A :class:`MapModule` maps (N, 1, H, W) slices in [0, 1] to (N, 1, H, W) anomaly maps in
``forward``. For training it says what it reconstructs (``features``), its objective (``loss``)
and, when one optimiser and one loss per step are not enough (e.g. a GAN), how to take a step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


class MapModule(nn.Module):
    """Base class: override ``forward`` and ``loss``; the rest has sensible defaults."""

    @property
    def cache_features(self) -> bool:
        """True when ``features`` is a fixed function of the slice, so it is computed once."""
        return True

    def features(self, x: Tensor) -> Tensor:
        """What the model learns from: by default the slice itself. Computed without gradients."""
        return x

    def loss(self, features: Tensor) -> Tensor:
        """The training objective on one batch of ``features``."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.parameters()

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """The optimisers, in the order :meth:`training_step` expects them (default: one Adam)."""
        return [torch.optim.Adam(self.trainable_parameters(), lr=lr)]

    def training_step(
        self, features: Tensor, optimizers: Sequence[torch.optim.Optimizer], step: int
    ) -> float:
        """One optimisation step at ``step`` (0-based); returns the loss to log."""
        (optimizer,) = optimizers
        loss = self.loss(features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
