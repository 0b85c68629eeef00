"""Per-volume post-processing of maps (fae.postprocess): the median across neighbouring slices
against a direct oracle, and the centring of each scan's map on its own quantile."""

import numpy as np
import pytest

from fae.config import TrainingConfig
from fae.errors import FaeInputError
from fae.postprocess import center_volumes, finish_maps, median_across_slices, smooth_inside


def oracle(maps, masks, size, volume, slice_index):
    """Each slice's median over the slices of its volume at index ± size // 2, looked up by
    index; where one is missing, the nearest present one on that side of the run stands in."""
    where = {(v, i): row for row, (v, i) in enumerate(zip(volume, slice_index, strict=True))}
    out = np.zeros_like(maps)
    for row, (v, i) in enumerate(zip(volume, slice_index, strict=True)):
        stack = []
        for step in range(-(size // 2), size // 2 + 1):
            j = i
            direction = 1 if step > 0 else -1
            for _ in range(abs(step)):  # walk outward while the run goes on
                if (v, j + direction) in where:
                    j += direction
            stack.append(maps[where[(v, j)]])
        out[row] = np.median(stack, axis=0)
    return np.where(masks, out, 0)


def test_a_response_in_one_slice_goes_and_one_across_slices_stays():
    maps = np.zeros((5, 4, 4), np.float32)
    maps[1, 0, 0] = 1.0  # one slice only: noise
    maps[2:5, 3, 3] = 0.5  # three slices: a lesion
    out = median_across_slices(maps, np.ones_like(maps, bool), 3)
    assert out[:, 0, 0].max() == 0
    np.testing.assert_array_equal(out[:, 3, 3], [0, 0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("size", [3, 5])
def test_matches_the_oracle_with_volumes_gaps_and_any_row_order(size):
    rng = np.random.default_rng(0)
    volume = np.array([0] * 7 + [1] * 5)
    slice_index = np.array([3, 4, 5, 6, 9, 10, 11, 0, 1, 2, 3, 4])  # volume 0 has a gap at 7-8
    maps = rng.random((12, 3, 3)).astype(np.float32)
    masks = rng.random((12, 3, 3)) > 0.2
    expected = oracle(maps, masks, size, volume, slice_index)
    np.testing.assert_array_equal(
        median_across_slices(maps, masks, size, volume, slice_index), expected
    )
    order = rng.permutation(12)
    shuffled = median_across_slices(
        maps[order], masks[order], size, volume[order], slice_index[order]
    )
    np.testing.assert_array_equal(shuffled, expected[order])
    # without volumes, the last slices of volume 0 and the first of volume 1 would mix
    assert not np.array_equal(median_across_slices(maps, masks, size), expected)


def test_size_one_is_the_identity_and_even_sizes_are_refused():
    maps = np.random.default_rng(1).random((3, 2, 2)).astype(np.float32)
    assert median_across_slices(maps, maps > 2, 1) is maps
    with pytest.raises(FaeInputError, match="slice_median"):
        TrainingConfig(slice_median=2)


def test_each_volume_is_centred_on_its_own_quantile_inside_the_brain():
    rng = np.random.default_rng(2)
    volume = np.array([1, 0, 1, 0, 0, 1])  # rows of two scans, interleaved
    maps = rng.random((6, 4, 4)).astype(np.float32)
    masks = rng.random((6, 4, 4)) > 0.3
    out = center_volumes(maps, masks, 0.25, volume)
    for v in (0, 1):
        rows = volume == v
        expected = maps[rows] - np.quantile(maps[rows][masks[rows]], 0.25)
        np.testing.assert_allclose(out[rows], np.where(masks[rows], expected, 0), atol=1e-6)
    # a scan brighter throughout by any constant maps the same: only what stands out counts
    shifted = maps.copy()
    shifted[volume == 1] += 7.0
    np.testing.assert_allclose(center_volumes(shifted, masks, 0.25, volume), out, atol=1e-5)
    assert not np.allclose(center_volumes(shifted, masks, 0.25), center_volumes(maps, masks, 0.25))
    # the quantile is of brain pixels only: values outside the mask do not move it
    outside = np.where(masks, maps, 100.0).astype(np.float32)
    np.testing.assert_array_equal(center_volumes(outside, masks, 0.25, volume), out)


def test_finish_maps_centres_then_filters_and_refuses_bad_quantiles():
    rng = np.random.default_rng(3)
    volume, slice_index = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1])
    maps = rng.random((5, 3, 3)).astype(np.float32)
    masks = np.ones_like(maps, bool)
    masks[0, 0, 0] = False
    centred = center_volumes(maps, masks, 0.1, volume)
    expected = median_across_slices(centred, masks, 3, volume, slice_index)
    np.testing.assert_array_equal(finish_maps(maps, masks, 0.1, 3, volume, slice_index), expected)
    assert finish_maps(maps, masks, 0.0, 1) is maps  # both off: the maps as they are
    for bad in (-0.1, 1.0):
        with pytest.raises(FaeInputError, match="volume_center"):
            TrainingConfig(volume_center=bad)


def test_the_weight_scales_the_centred_map_before_the_median():
    """The weight multiplies what stands out within the scan: after the centring (so a scan's
    own level is not weighted) and before the median across slices."""
    rng = np.random.default_rng(4)
    volume, slice_index = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1])
    maps = rng.random((5, 3, 3)).astype(np.float32) + 5  # a high level that the centring removes
    masks = np.ones_like(maps, bool)
    masks[1, 1, 1] = False
    weight = rng.uniform(0.5, 1, maps.shape).astype(np.float32)
    got = finish_maps(maps, masks, 0.25, 3, volume, slice_index, weight)
    centred = center_volumes(maps, masks, 0.25, volume)
    expected = median_across_slices(centred * weight, masks, 3, volume, slice_index)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    weighted_first = finish_maps(maps * weight, masks, 0.25, 3, volume, slice_index)
    assert not np.allclose(got, weighted_first), "the order matters"
    assert got[1, 1, 1] == 0 and np.abs(got).max() < 2, "0 outside the brain; the level is gone"


def test_smooth_inside_averages_over_the_brain_only():
    """A Gaussian in-plane over brain pixels only: a constant brain stays constant up to its
    edge (the background neither counts nor pulls the edge down), slices never mix, 0 outside
    the brain, and sigma 0 leaves the values as they are."""
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 8:24, 6:26] = True
    constant = np.where(masks, 0.3, 0.0).astype(np.float32)
    constant[1][masks[1]] = 0.7
    out = smooth_inside(constant, masks, 2.0)
    np.testing.assert_allclose(out[0][masks[0]], 0.3, atol=1e-6)
    np.testing.assert_allclose(out[1][masks[1]], 0.7, atol=1e-6)
    assert not out[~masks].any()
    noisy = np.where(masks, rng.random(masks.shape), 5.0).astype(np.float32)
    smooth = smooth_inside(noisy, masks, 2.0)
    assert smooth[masks].std() < noisy[masks].std() / 2, "noise inside the brain is averaged"
    assert smooth[masks].max() < 1, "the bright background is not let in"
    single = smooth_inside(noisy[:1], masks[:1], 2.0)
    np.testing.assert_array_equal(single[0], smooth[0])
    np.testing.assert_array_equal(smooth_inside(noisy, masks, 0), noisy)
