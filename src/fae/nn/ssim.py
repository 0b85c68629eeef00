"""Structural similarity (SSIM) per channel, as a differentiable map.

Gaussian window (5×5, σ=1.5 by default, as in the paper), zero padding so the map keeps the
input's size, C1 = 0.01², C2 = 0.03² (data range 1). Works on any number of channels: each
channel of the feature maps is compared on its own. Computed in float32 (or float64), also in a
bf16 autocast region: the variances are differences of close numbers, which bf16's 8-bit
mantissa would cancel away.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gaussian_1d(size: int = 5, sigma: float = 1.5) -> Tensor:
    """(size,) normalised Gaussian, centred; the 2D window is its outer product."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_window(size: int = 5, sigma: float = 1.5) -> Tensor:
    """(size, size) normalised Gaussian kernel, centred."""
    g = gaussian_1d(size, sigma)
    return torch.outer(g, g).float()


def blur_matrix(n: int, size: int = 5, sigma: float = 1.5) -> Tensor:
    """(n, n) banded matrix B with ``B @ v`` = v convolved with the 1D Gaussian, zero-padded.

    The Gaussian window is separable, so blurring an (..., H, W) map with zero padding is
    ``B_H @ x @ B_W.T``: two small matrix products, much faster on CPUs than a depthwise
    convolution over hundreds of feature channels, and exactly the same result.
    """
    g = gaussian_1d(size, sigma).tolist()  # plain numbers: constants in an exported graph
    half = size // 2
    b = torch.zeros(n, n, dtype=torch.float64)
    for offset in range(-half, half + 1):
        b += torch.diag(torch.full((n - abs(offset),), g[offset + half]), offset)
    return b.float()


def ssim_map(
    x: Tensor,
    y: Tensor,
    window_size: int = 5,
    sigma: float = 1.5,
    c1: float = 0.01**2,
    c2: float = 0.03**2,
    per_slice: bool | None = None,
) -> Tensor:
    """SSIM of (N, C, H, W) tensors, per pixel and channel → (N, C, H, W), 1 where identical.

    ``per_slice``: compute one slice at a time (the default for maps on a CPU, where no gradient
    is needed: the temporaries stay in the cache, 1.2× faster for 64 slices of 176×32×32
    features, the same numbers) or the whole batch at once."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim_map expects two (N, C, H, W) tensors, got {x.shape} and {y.shape}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.to(dtype).contiguous(), y.to(dtype).contiguous()
        if per_slice is None:
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
            # (not while exporting: a loop over the batch would be unrolled at its traced size)
            exporting = torch.compiler.is_exporting()
            per_slice = not needs_grad and x.device.type == "cpu" and not exporting
        if not per_slice:
            return _ssim_map(x, y, window_size, sigma, c1, c2)
        out = torch.empty_like(x)
        for i in range(len(x)):
            out[i : i + 1] = _ssim_map(x[i : i + 1], y[i : i + 1], window_size, sigma, c1, c2)
        return out


def _ssim_map(x: Tensor, y: Tensor, window_size: int, sigma: float, c1: float, c2: float) -> Tensor:
    rows = blur_matrix(x.shape[2], window_size, sigma).to(x)
    cols = blur_matrix(x.shape[3], window_size, sigma).to(x).T

    def blur(t: Tensor) -> Tensor:
        return rows @ t @ cols

    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = blur(x * x) - mu_xx
    var_y = blur(y * y) - mu_yy
    cov = blur(x * y) - mu_xy
    return ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))


class SSIMLoss(nn.Module):
    """1 − mean SSIM over pixels and channels: the Feature Autoencoder's training loss."""

    def __init__(self, window_size: int = 5, sigma: float = 1.5) -> None:
        super().__init__()
        self.window_size = window_size
        self.sigma = sigma

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        return 1 - ssim_map(reconstruction, target, self.window_size, self.sigma).mean()
