import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from fae.data.slices import SliceSet
from fae.evaluation import best_and_worst_slices, evaluate_maps, slice_scores, top_fraction
from fae.methods.statistics import Threshold
from fae.viz import overlay_rgb, save_slice_figure


def toy_slices(n=6, size=16, seed=0) -> SliceSet:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    masks[:, 2:-2, 2:-2] = True
    segs = np.zeros_like(masks)
    segs[1, 5:9, 5:9] = segs[3, 4:10, 6:8] = segs[4, 6:8, 6:8] = True
    images = np.where(masks, images, 0)
    return SliceSet(images, segs, masks, np.array([0, 0, 0, 1, 1, 1]), np.arange(n) % 3, ("a", "b"))


def test_evaluate_maps_agrees_with_sklearn_inside_the_brain():
    s = toy_slices()
    maps = Threshold(progress=False).fit(s).predict(s) + 0.5 * s.segs
    summary, per_subject = evaluate_maps(s, maps)
    ap = average_precision_score(s.segs[s.masks], maps[s.masks])
    assert abs(summary["pixel_ap"] - ap) < 1e-3  # streaming bins: relative 2^-12
    scores = slice_scores(maps, s.masks)
    assert summary["slice_auroc"] == roc_auc_score(s.slice_labels, scores)
    assert summary["n_pixels"] == s.masks.sum() and summary["n_lesion_pixels"] == s.segs.sum()
    assert [r["subject"] for r in per_subject] == ["a", "b"]
    assert [r["lesion_slices"] for r in per_subject] == [1, 2]


def test_slice_score_is_mean_of_a_top_fraction_or_the_maximum():
    maps = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    masks = np.ones_like(maps, bool)
    assert slice_scores(maps, masks)[0] == np.mean(np.arange(90, 100))
    assert slice_scores(maps, masks, "max")[0] == 99
    assert slice_scores(maps, masks, "top25")[0] == np.mean(np.arange(75, 100))
    assert slice_scores(maps, np.zeros_like(masks))[0] == 0
    # any fraction, rounded up to whole pixels of the brain (here 3 % of 50 pixels: 2)
    half = masks & (np.arange(100).reshape(1, 10, 10) < 50)
    assert top_fraction(maps, half, 0.03)[0] == np.mean([48, 49])


def test_best_and_worst_and_figure(tmp_path):
    s = toy_slices()
    maps = s.segs.astype(np.float32)
    maps[4] = 0  # slice 4's lesion is missed
    best, worst = best_and_worst_slices(s, maps, threshold=0.5, n=1, min_pixels=1)
    assert best[0] in (1, 3) and worst[0] == 4
    path = save_slice_figure(
        s.images[[1, 4]], s.segs[[1, 4]], maps[[1, 4]], tmp_path / "f.png", 0.5, 1.0, ["b", "w"]
    )
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_map_pictures_use_the_calibrated_scale():
    # maps between 0.7 and 0.95 with the healthy threshold at 0.7: below it the image stays
    # grey, above it the colours spread over the whole scale (not one uniform orange)
    image = np.full((1, 4), 0.5, np.float32)
    amap = np.array([[0.5, 0.69, 0.75, 0.95]], np.float32)
    rgb = overlay_rgb(image, amap, vmin=0.7, vmax=0.95)
    np.testing.assert_array_equal(rgb[0, :2], 0.5)
    assert not np.allclose(rgb[0, 2:], 0.5)
    assert rgb[0, 3, 1] - rgb[0, 2, 1] > 0.4  # red at the threshold, yellow at the top
