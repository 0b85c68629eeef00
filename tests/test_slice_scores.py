"""``benchmarks/slice_scores.py``'s account of which lesion-free slices outscore lesion slices,
quoted in the README: distances counted in slices of the same patient, shares with ties as
half, and the slice AUROC with the slices next to a lesion left out."""

from __future__ import annotations

import numpy as np
import pytest

from fae.data.slices import SliceSet

from conftest import benchmark_script


@pytest.fixture(scope="module")
def slice_scores():
    return benchmark_script("slice_scores")


def test_lesion_free_slices_grouped_by_their_distance_to_a_lesion(slice_scores):
    # patient A: axial slices 10-14 and 16 (15 was not kept), lesion on 13;
    # patient B: slices 0-4, lesion on 0, slice 4 without brain
    subject = np.array([0] * 6 + [1] * 5)
    index = np.array([10, 11, 12, 13, 14, 16, 0, 1, 2, 3, 4])
    n = len(subject)
    segs = np.zeros((n, 4, 4), bool)
    segs[[3, 6], 1, 1] = True
    masks = np.ones((n, 4, 4), bool)
    masks[10] = False
    slices = SliceSet(np.zeros((n, 4, 4), np.float32), segs, masks, subject, index, ("A", "B"))
    # lesion slices 0.9 and 0.5; lesion-free slices by distance: 1 → 0.7, 2 → 0.5 (a tie with a
    # lesion slice), 3 → 0.1 but A's slice 16 (3 from the lesion, not 2) → 0.5
    dark = np.array([0.1, 0.5, 0.7, 0.9, 0.7, 0.5, 0.5, 0.7, 0.5, 0.1, 0.0])
    centred = np.where(segs.any(axis=(1, 2)), dark, 0.0)
    out = slice_scores.by_lesion_distance(
        slices, {"dark / top25": dark, "centred / top25": centred}
    )
    assert out["1–1"] == {"slices": 3, "dark": 0.5, "centred": 0.0}
    assert out["2–2"] == {"slices": 2, "dark": 0.25, "centred": 0.0}  # ties count half
    # the slice without brain is in no group
    assert out["3–4"] == {"slices": 3, "dark": pytest.approx(0.25 / 3), "centred": 0.0}
    assert out["5–9"]["slices"] == 0 and np.isnan(out["5–9"]["dark"])
    # left: 0.1, 0.5, 0.1 and the slice without brain (0.0) against 0.9 and 0.5: 7.5 of 8 pairs
    assert out["near_lesion_out"] == {"dark": 7.5 / 8, "centred": 1.0, "slices": 5}
    spread = slice_scores.across_patients(slices, dark)
    # pooled 13.5 of 18 pairs; B alone 0.625, A alone 1.0: leaving B out gains 0.25
    assert spread["leave_one_out_gain"] == pytest.approx(1.0 - 0.75)
    assert spread["within_patient"] == pytest.approx((1.0 + 0.625) / 2)
    assert spread["brain_area"] == pytest.approx(10 / 18)  # the slice without brain is lesion-free
