import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import structural_similarity

from fae.nn.ssim import SSIMLoss, blur_matrix, gaussian_window, ssim_map


def images(seed=0, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.uniform(0, 1, shape), 2)
    b = np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1)
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_image_with_the_same_gaussian_window(seed):
    """skimage's Gaussian SSIM uses σ=1.5 truncated at 3.5σ (11×11); compare away from the
    border, where only the padding differs (skimage reflects, the paper zero-pads)."""
    a, b = images(seed)
    _, full = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ours = ssim_map(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], window_size=11
    )
    np.testing.assert_allclose(ours[0, 0, 5:-5, 5:-5].numpy(), full[5:-5, 5:-5], atol=1e-5)


def test_zero_padded_5x5_window_against_direct_convolution():
    a, b = images(3)
    w = gaussian_window(5, 1.5).double().numpy()

    def blur(x):
        return ndimage.correlate(x, w, mode="constant", cval=0.0)

    mx, my = blur(a), blur(b)
    vx, vy, cxy = blur(a * a) - mx**2, blur(b * b) - my**2, blur(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    ours = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    assert ours.shape == (1, 1, 48, 40)
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, atol=1e-5)


def test_blur_matrix_equals_depthwise_convolution():
    x = torch.randn(2, 3, 16, 12)
    w = gaussian_window(5, 1.5).expand(3, 1, 5, 5)
    conv = F.conv2d(x, w, padding=2, groups=3)
    matmul = blur_matrix(16) @ x @ blur_matrix(12).T
    torch.testing.assert_close(matmul, conv, atol=1e-5, rtol=1e-5)


def test_channels_are_independent_and_identity_is_one():
    x = torch.rand(2, 4, 16, 16)
    y = x.clone()
    y[:, 2] = torch.rand(2, 16, 16)
    s = ssim_map(x, y)
    torch.testing.assert_close(s[:, [0, 1, 3]], torch.ones(2, 3, 16, 16))
    assert s[:, 2].mean() < 0.5
    assert SSIMLoss()(x, x).abs() < 1e-6
    loss = SSIMLoss()(y.requires_grad_(), x)
    loss.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
