"""f-AnoGAN's hyper-parameters (the FAE paper's comparison code)."""

from __future__ import annotations

from dataclasses import dataclass

from fae.config import TrainingConfig


@dataclass
class FAnoGANConfig(TrainingConfig):
    dim: int = 64
    latent: int = 128
    batch_size: int = 64
    steps: int = 20_000
    gan_steps: int = 10_000
    lr_encoder: float = 5e-5
    lambda_gp: float = 10.0
    kappa: float = 1.0
    ssim_window: int = 11

    def problems(self) -> dict[str, bool]:
        return {
            **super().problems(),
            "gan_steps must be at least 1 and below steps": not 0 < self.gan_steps < self.steps,
            "dim and latent must be at least 1": min(self.dim, self.latent) < 1,
            "train_slices masked is not supported (the GAN cannot leave lesions out)": (
                self.train_slices == "masked"
            ),
        }
