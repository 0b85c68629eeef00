"""f-AnoGAN's networks as one pure ``nn.Module``: residual generator, critic and encoder,
the WGAN-GP phase and the izi_f encoder phase as its training step (see the package docs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fae.distributed import global_draw
from fae.errors import FaeInputError
from fae.methods.fanogan.config import FAnoGANConfig
from fae.nn.module import MapModule, weighted_mean
from fae.nn.ssim import ssim_map

_WIDTHS = (8, 8, 4, 4, 2, 1)  # × dim, from the S/32 bottom up to the full-size slice


class _ResBlock(nn.Module):
    """Pre-activation residual block that halves (``"down"``) or doubles (``"up"``) H and W."""

    def __init__(self, a: int, b: int, resample: str, norm: str, size: int) -> None:
        super().__init__()
        self.resample = resample

        def make_norm(channels: int, side: int) -> nn.Module:
            return (
                nn.BatchNorm2d(channels)
                if norm == "batch"
                else nn.LayerNorm([channels, side, side])
            )

        inner = size * 2 if resample == "up" else size
        self.norm1, self.conv1 = make_norm(a, size), nn.Conv2d(a, b, 3, padding=1)
        self.norm2, self.conv2 = make_norm(b, inner), nn.Conv2d(b, b, 3, padding=1)
        self.shortcut = nn.Conv2d(a, b, 1)

    def _scale(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            h = self.conv1(self._scale(F.relu(self.norm1(x))))
            h = self.conv2(F.relu(self.norm2(h)))
            return self.shortcut(self._scale(x)) + h
        h = self.conv1(F.relu(self.norm1(x)))
        h = self._scale(self.conv2(F.relu(self.norm2(h))))
        return self._scale(self.shortcut(x)) + h


def _down_stack(dim: int, size: int, norm: str) -> nn.Sequential:
    widths = [w * dim for w in _WIDTHS[::-1]]  # 1, 2, 4, 4, 8, 8 × dim
    blocks: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1)]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        blocks.append(_ResBlock(a, b, "down", norm, size // 2**i))
    return nn.Sequential(*blocks)


class FAnoGANModule(MapModule):
    """Generator, critic and encoder; the residual is 1 − SSIM(G(E(x)), x)."""

    def __init__(self, size: int, config: FAnoGANConfig) -> None:
        super().__init__()
        if size % 32:
            raise FaeInputError(None, f"f-AnoGAN needs a slice size divisible by 32, got {size}")
        d, bottom = config.dim, size // 32
        self.config, self.bottom = config, bottom
        flat = _WIDTHS[0] * d * bottom * bottom
        ups = [
            _ResBlock(a * d, b * d, "up", "batch", bottom * 2**i)
            for i, (a, b) in enumerate(zip(_WIDTHS[:-1], _WIDTHS[1:], strict=True))
        ]
        self.generator = nn.Sequential(
            nn.Linear(config.latent, flat),
            nn.Unflatten(1, (_WIDTHS[0] * d, bottom, bottom)),
            *ups,
            nn.BatchNorm2d(d),
            nn.ReLU(),
            nn.Conv2d(d, 1, 3, padding=1),
            nn.Tanh(),
        )
        self.critic_features = nn.Sequential(_down_stack(d, size, "layer"), nn.Flatten())
        self.critic_head = nn.Linear(flat, 1)
        self.encoder = nn.Sequential(
            _down_stack(d, size, "batch"), nn.Flatten(), nn.Linear(flat, config.latent), nn.Tanh()
        )

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        critic = [*self.critic_features.parameters(), *self.critic_head.parameters()]
        return [
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.0, 0.9)),
            torch.optim.Adam(critic, lr=lr, betas=(0.0, 0.9)),
            torch.optim.Adam(self.encoder.parameters(), lr=self.config.lr_encoder),
        ]

    def critic(self, x: Tensor) -> Tensor:
        return self.critic_head(self.critic_features(x))

    def training_step(
        self,
        features: Tensor,
        optimizers: Sequence[torch.optim.Optimizer],
        step: int,
        weight: Tensor | None = None,
    ) -> float:
        g_opt, d_opt, e_opt = optimizers
        real = features * 2 - 1
        if step < self.config.gan_steps:
            fake = self.generator(self._noise(len(real), real)).detach()
            d_loss = self.critic(fake).mean() - self.critic(real).mean()
            d_loss = d_loss + self.config.lambda_gp * self._gradient_penalty(real, fake)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            g_loss = -self.critic(self.generator(self._noise(len(real), real))).mean()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            return d_loss.item()
        # phase 2: generator and critic frozen (no gradients, no BatchNorm statistics updates)
        self.generator.eval().requires_grad_(False)
        self.critic_features.requires_grad_(False)
        return super().training_step(features, [e_opt], step, weight)

    def _noise(self, n: int, like: Tensor) -> Tensor:
        return global_draw(
            lambda s: torch.randn(s, device=like.device, dtype=like.dtype), (n, self.config.latent)
        )

    def _gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        alpha = global_draw(
            lambda s: torch.rand(s, device=real.device, dtype=real.dtype), (len(real), 1, 1, 1)
        )
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def reconstruct(self, x: Tensor) -> Tensor:
        """(N, 1, S, S) in [0, 1] → G(E(x)) in [0, 1]."""
        return (self.generator(self.encoder(x * 2 - 1)) + 1) / 2

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        """1 − SSIM of the slice and its reconstruction, per pixel (11×11 window)."""
        return 1 - ssim_map(reconstruction, features, self.config.ssim_window)

    def loss(self, features: Tensor, weight: Tensor | None = None) -> Tensor:
        """izi_f: the mean residual plus κ times the critic-feature residual."""
        x = features
        reconstruction = self.reconstruct(x)
        image = weighted_mean(self.residual(x, reconstruction), weight)
        critic = F.mse_loss(
            self.critic_features(reconstruction * 2 - 1), self.critic_features(x * 2 - 1)
        )
        return image + self.config.kappa * critic
