import nibabel as nib
import numpy as np
import pytest

from fae.data.brainmask import intensity_mask
from fae.data.preprocess import PrepConfig, prepare_volume
from fae.data.volume import Volume
from fae.errors import FaeInputError

from conftest import TOY_AFFINE, head


def vol(data, affine=None) -> Volume:
    return Volume(
        np.asarray(data, np.float32), TOY_AFFINE if affine is None else affine, None, "test"
    )


def test_shapes_ranges_and_background():
    image, seg, brain = head()
    pv = prepare_volume(vol(image), vol(seg), vol(brain), PrepConfig(size=32))
    n = pv.images.shape[0]
    assert pv.images.shape == pv.segs.shape == pv.masks.shape == (n, 32, 32)
    assert pv.images.dtype == np.float32 and pv.segs.dtype == bool
    assert pv.images.min() >= 0 and pv.images.max() <= 1
    assert not pv.images[~pv.masks].any(), "background must stay 0"
    assert pv.segs.any() and not (pv.segs & ~pv.masks).any()
    # equalised: brain intensities spread over [0, 1] roughly uniformly
    inside = pv.images[pv.masks]
    assert abs(np.median(inside) - 0.5) < 0.1
    # 'brain' slice selection keeps exactly the slices with brain voxels
    np.testing.assert_array_equal(pv.slice_index, np.flatnonzero(brain.any(axis=(0, 1))))


def test_crop_and_pad_boxes():
    image, _, brain = head(shape=(40, 48, 6))
    cropped = prepare_volume(vol(image), brainmask=vol(brain), config=PrepConfig(size=16))
    padded = prepare_volume(
        vol(image), brainmask=vol(brain), config=PrepConfig(size=16, square="pad")
    )
    assert cropped.crop == (0, 4, 40) and padded.crop == (-4, 0, 48)


def test_reorientation_gives_the_same_slices():
    """An LPS-stored copy of a RAS volume must prepare to identical slices."""
    image, seg, brain = head()
    ras = prepare_volume(vol(image), vol(seg), vol(brain), PrepConfig(size=32))
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip = lambda a: a[::-1, ::-1, :]  # noqa: E731
    lps = prepare_volume(
        vol(flip(image), lps_affine),
        vol(flip(seg), lps_affine),
        vol(flip(brain), lps_affine),
        PrepConfig(size=32),
    )
    np.testing.assert_allclose(ras.images, lps.images, atol=1e-6)
    np.testing.assert_array_equal(ras.segs, lps.segs)
    np.testing.assert_array_equal(lps.ornt, nib.orientations.io_orientation(lps_affine))


def test_slice_range_and_min_brain_fraction():
    image, _, brain = head()
    pv = prepare_volume(vol(image), brainmask=vol(brain), config=PrepConfig(size=16, slices=(3, 6)))
    assert list(pv.slice_index) == [3, 4, 5]
    few = prepare_volume(
        vol(image), brainmask=vol(brain), config=PrepConfig(size=16, min_brain_fraction=0.4)
    )
    assert 0 < len(few.slice_index) < brain.shape[2]


def test_seg_threshold_binarises_after_resize():
    image, _, brain = head(shape=(64, 64, 3))
    seg = np.zeros_like(brain)
    seg[30:32, 30:32, 1] = 1  # 2x2 voxels -> 0.5x0.5 after 4x downsampling: only a faint blur
    low = prepare_volume(vol(image), vol(seg), vol(brain), PrepConfig(size=16, seg_threshold=0.0))
    high = prepare_volume(vol(image), vol(seg), vol(brain), PrepConfig(size=16, seg_threshold=0.4))
    assert low.segs.sum() > 0 and high.segs.sum() == 0


def test_shape_mismatch_is_an_error():
    image, seg, _ = head()
    with pytest.raises(FaeInputError, match="segmentation shape"):
        prepare_volume(vol(image), vol(seg[:-1]))


def test_intensity_mask_rules():
    image, _, brain = head()
    shifted = np.where(brain > 0, image - 0.55, 0)  # negative values inside a zero background
    np.testing.assert_array_equal(intensity_mask(shifted), brain.astype(bool))
    noisy = np.where(brain > 0, image, 0) + np.random.default_rng(0).uniform(
        0.01, 0.05, image.shape
    )
    mask = intensity_mask(noisy.astype(np.float32))
    assert (mask == brain.astype(bool)).mean() > 0.97


def test_config_round_trip_and_key():
    config = PrepConfig(size=64, slices=(2, 9))
    assert PrepConfig.from_dict(config.to_dict()) == config
    assert config.key() != PrepConfig().key()
    with pytest.raises(FaeInputError):
        PrepConfig(square="stretch")
    with pytest.raises(FaeInputError, match="brain mask must be one of"):
        PrepConfig(brain_mask="bet")
    old = config.to_dict()
    del old["brain_mask"]  # saved by a fae from before brain extraction
    with pytest.raises(FaeInputError, match="older fae .no setting 'brain_mask'.: train it"):
        PrepConfig.from_dict(old)
    # HD-BET's settings do not matter (nor enter cache keys) for the other sources
    assert PrepConfig(brain_mask="otsu", hd_bet_mode="accurate") == PrepConfig(brain_mask="otsu")
    assert PrepConfig(hd_bet_mode="accurate") != PrepConfig()


@pytest.mark.parametrize("size_in", [240, 256, 200, 181, 130, 128, 97, 64])
def test_resize_is_pytorchs_bilinear(size_in):
    # the NumPy resize (so that prediction needs no torch) against PyTorch's own, shrinking
    # with anti-aliasing and enlarging without, on images and on the binary masks it thresholds
    import torch
    import torch.nn.functional as F

    from fae.data.preprocess import _resize

    rng = np.random.default_rng(size_in)
    for stack in (rng.random((3, size_in, size_in)), rng.random((3, size_in, size_in)) > 0.5):
        stack = stack.astype(np.float32)
        t = torch.from_numpy(stack)[:, None]
        expected = F.interpolate(t, size=(128, 128), mode="bilinear", align_corners=False,
                                 antialias=size_in > 128)[:, 0].numpy()  # fmt: skip
        got = _resize(stack, 128)
        assert got.dtype == np.float32 and got.shape == (3, 128, 128)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2.5e-7)
        # a mask pixel that is a tie (0.5 up to rounding, which differs between CPUs' SIMD
        # kernels) may fall either side of the threshold; every other one must agree
        decided = np.abs(expected - 0.5) > 2.5e-7
        np.testing.assert_array_equal((got > 0.5)[decided], (expected > 0.5)[decided])
