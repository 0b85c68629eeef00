"""The convolutional autoencoder that reconstructs feature maps (Meissen et al. 2022).

Encoder: per hidden width, a 5×5 stride-2 convolution (no bias), BatchNorm, LeakyReLU and
Dropout2d. Decoder: the mirror image with 6×6 stride-2 transposed convolutions (the last one
back to the feature channels, also with BatchNorm, LeakyReLU and Dropout2d), then a 1×1
convolution. For 256×32×32 features and widths 100-150-200-300 the
bottleneck is 300×2×2 and the model has about 8 M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

DEFAULT_HIDDEN = (100, 150, 200, 300)


def _block(conv: nn.Module, channels: int, dropout: float) -> nn.Sequential:
    layers = [conv, nn.BatchNorm2d(channels), nn.LeakyReLU()]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class FeatureAutoencoder(nn.Module):
    """(N, C, H, W) features → (N, C, H, W) reconstruction; H and W divisible by 2^len(hidden)."""

    def __init__(
        self, in_channels: int, hidden: Sequence[int] = DEFAULT_HIDDEN, dropout: float = 0.1
    ) -> None:
        super().__init__()
        widths = [in_channels, *hidden]
        self.encoder = nn.Sequential(
            *(
                _block(nn.Conv2d(a, b, 5, stride=2, padding=2, bias=False), b, dropout)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.decoder = nn.Sequential(
            *(
                _block(nn.ConvTranspose2d(b, a, 6, stride=2, padding=2, bias=False), a, dropout)
                for a, b in zip(widths[-2::-1], widths[:0:-1], strict=True)
            ),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))
