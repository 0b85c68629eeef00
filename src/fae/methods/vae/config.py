"""The VAE's settings: the image autoencoder's, plus the weight of the KL term."""

from __future__ import annotations

from dataclasses import dataclass

from fae.methods.ae.config import AEConfig


@dataclass
class VAEConfig(AEConfig):
    kl_weight: float = 0.05
