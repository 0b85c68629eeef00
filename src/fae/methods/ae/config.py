"""Settings of the image-space autoencoders (reference: FeliMe/feature-autoencoder baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fae.config import TrainingConfig


@dataclass
class AEConfig(TrainingConfig):
    """Widths of the five stride-2 convolutions, the dense bottleneck, and the SSIM window."""

    hidden: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    latent: int = 256
    batch_size: int = 64
    ssim_window: int = 11
    ssim_sigma: float = 1.5

    def problems(self) -> dict[str, bool]:
        return {
            **super().problems(),
            "latent must be at least 1": self.latent < 1,
            "hidden needs at least one width": not self.hidden,
        }
