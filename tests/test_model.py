"""The Feature-Autoencoder: shapes, learning, checkpoints, exact resume."""

import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

import fae.train as train_module
from fae.calibration import calibrate_thresholds
from fae.data.preprocess import PrepConfig, prepare_volume
from fae.data.slices import stack_volumes
from fae.data.synthetic import synthesize_subject
from fae.data.volume import Volume
from fae.errors import FaeInputError
from fae.methods.fae import FAE, FeatureAutoencoder, StructuralFAE
from fae.postprocess import center_volumes, median_across_slices, smooth_inside

PREP = PrepConfig(size=64)
TINY = {
    "backbone": "efficientnet-lite0",
    "hidden": [32, 64],
    "batch_size": 8,
    "val_every": 5,
    "log_every": 1,
    "train_batchnorm": False,  # features cached: fast; the resume test covers the default
}


@pytest.fixture(scope="module")
def healthy():
    """Slices of three synthetic healthy brains (2 mm), prepared at 64×64."""
    volumes = []
    for i in range(3):
        s = synthesize_subject("healthy", i, None, modalities=("t1",), resolution_mm=2)
        vol = prepare_volume(
            Volume(s.images["t1"], s.affine, None, "t1"),
            None,
            Volume(s.brainmask, s.affine, None, "m"),
            PREP,
        )
        volumes.append(vol)
    slices = stack_volumes(["a", "b", "c"], volumes, 64)
    keep = slices.masks.mean(axis=(1, 2)) > 0.25  # slices with plenty of brain
    return slices.take(keep)


def test_paper_architecture_shapes_and_size():
    ae = FeatureAutoencoder(256)
    # the paper's layers, counted: 5x5 convolutions and 6x6 transposed ones without bias,
    # BatchNorm (2 per channel) after each, and the final 1x1 convolution (256 x 256)
    widths = [256, 100, 150, 200, 300]
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    encoder = sum(a * b * 25 + 2 * b for a, b in pairs)
    decoder = sum(b * a * 36 + 2 * a for a, b in pairs)
    assert sum(p.numel() for p in ae.parameters()) == encoder + decoder + 256 * 256 == 8_035_048
    assert ae(torch.randn(2, 256, 32, 32)).shape == (2, 256, 32, 32)
    model = StructuralFAE(weights=None)
    x = torch.rand(2, 1, 128, 128)
    assert model.features(x).shape == (2, 256, 32, 32)
    maps = model(x)
    assert maps.shape == (2, 1, 128, 128) and torch.isfinite(maps).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_and_flags_an_implanted_anomaly(healthy, precision):
    """A short run (higher learning rate than the paper's, to learn in 80 steps) must score
    slices with an implanted structural anomaly above the same slices without it, in either
    precision; the same model's maps in the other precision agree with its own."""
    fit_on = healthy.take(np.arange(len(healthy)) % 4 != 0)
    params = {**TINY, "steps": 80, "lr": 3e-3, "precision": precision}
    est = FAE(prep=PREP, progress=False, **params).fit(fit_on)
    assert est.meta["precision"] == precision
    test = healthy.take(np.arange(len(healthy)) % 4 == 0)
    region = np.zeros((64, 64), bool)
    region[22:38, 18:34] = True
    yy, xx = np.mgrid[:64, :64]
    checker = ((yy // 2 + xx // 2) % 2).astype(np.float32)  # mean 0.5: not simply brighter
    anomalous = test.images.copy()
    for img, mask in zip(anomalous, test.masks, strict=True):
        img[region & mask] = checker[region & mask]
    healthy_maps = est.predict(test.images, test.masks)
    anomalous_maps = est.predict(anomalous, test.masks)
    healthy_scores = est.slice_scores(healthy_maps, test.masks)
    anomalous_scores = est.slice_scores(anomalous_maps, test.masks)
    assert (anomalous_scores > healthy_scores).mean() >= 0.9
    inside = region[None] & test.masks
    assert anomalous_maps[inside].mean() > healthy_maps[inside].mean() + 0.04
    assert not healthy_maps[~test.masks].any(), "maps are 0 outside the brain"
    est.map_precision_override = "bf16" if precision == "fp32" else "fp32"
    other = est.predict(anomalous, test.masks)
    diff = np.abs(other - anomalous_maps)[test.masks]
    contrast = anomalous_maps[inside].mean() - healthy_maps[inside].mean()
    assert diff.mean() < 0.05 * contrast and diff.max() < contrast
    assert np.corrcoef(other[test.masks], anomalous_maps[test.masks])[0, 1] > 0.99


def test_same_seed_same_weights_and_checkpoint_round_trip(healthy, tmp_path):
    a = FAE(prep=PREP, steps=4, progress=False, **TINY).fit(healthy)
    b = FAE(prep=PREP, steps=4, progress=False, **TINY).fit(healthy)
    for (name, pa), pb in zip(
        a.model_.state_dict().items(), b.model_.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    a.save(tmp_path / "m.pt")
    loaded = FAE.load(tmp_path / "m.pt", progress=False)
    assert loaded.config == a.config and loaded.prep == PREP and loaded.step_ == 4
    np.testing.assert_array_equal(loaded.predict(healthy.images[:3]), a.predict(healthy.images[:3]))
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["versions"]["torch"] == str(torch.__version__) and raw["config"]["steps"] == 4


def test_standardized_features_learn_faster(healthy):
    """The named deviation from the paper: z-scored feature channels reach a lower SSIM loss
    in the same number of steps, and their statistics travel with the model."""
    losses = {}
    for standardize in (False, True):
        est = FAE(
            prep=PREP, progress=False, **{**TINY, "steps": 40, "standardize_features": standardize}
        )
        est.fit(healthy)
        feats = est.model_.features(torch.from_numpy(healthy.images[:16])[:, None])
        est.model_.eval()
        with torch.no_grad():
            losses[standardize] = float(est.model_.loss(feats))
        if standardize:
            assert abs(float(feats.mean())) < 0.5 and 0.5 < float(feats.std()) < 2
            assert not torch.equal(est.model_.feature_std, torch.ones_like(est.model_.feature_std))
    assert losses[True] < losses[False] - 0.05


@pytest.mark.parametrize(
    ("how", "precision"), [("ctrl-c", "bf16"), ("ctrl-c", "fp32"), ("killed", "bf16")]
)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    healthy, tmp_path, monkeypatch, how, precision
):
    # ctrl-c: the paper's extractor BatchNorm in train mode (features recomputed every step);
    # killed: frozen BatchNorm with cached, standardised features. Exact in either precision.
    params = {**TINY, "steps": 6, "checkpoint_every": 3, "precision": precision}
    if how == "ctrl-c":
        params["train_batchnorm"] = True
    else:
        params["standardize_features"] = True
    # 40 training slices: 6 steps of 8 cross an epoch's end; fewer slices to extract features of
    index = np.arange(len(healthy))
    val, train = healthy.take(index < 8), healthy.take((index >= 8) & (index < 48))
    reference = FAE(prep=PREP, progress=False, **params).fit(train, val, run_dir=tmp_path / "ref")

    calls = {"n": 0}
    real_next = train_module.EpochSampler.next

    def interrupting_next(self):
        calls["n"] += 1
        if calls["n"] == 5 and how == "ctrl-c":
            signal.raise_signal(signal.SIGINT)  # noticed after step 5: checkpoint at 5, then stop
        if calls["n"] == 5 and how == "killed":
            raise SystemExit("killed")  # nothing saved since the step-3 checkpoint
        return real_next(self)

    monkeypatch.setattr(train_module.EpochSampler, "next", interrupting_next)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else SystemExit):
        FAE(prep=PREP, progress=False, **params).fit(train, val, run_dir=run)
    monkeypatch.setattr(train_module.EpochSampler, "next", real_next)
    assert FAE.load(run, progress=False).step_ == (5 if how == "ctrl-c" else 3)
    resumed = FAE.resume(run, train, val, progress=False)
    assert resumed.step_ == 6
    for (name, pa), pb in zip(
        reference.model_.state_dict().items(), resumed.model_.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    log = (run / "train_log.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in log[1:]] == [1, 2, 3, 4, 5, 6]


def test_bad_checkpoints_and_settings(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FaeInputError, match="not a readable fae checkpoint"):
        FAE.load(bad)
    with pytest.raises(FaeInputError, match="checkpoint not found"):
        FAE.load(tmp_path / "missing.pt")
    with pytest.raises(FaeInputError, match="unknown setting"):
        FAE(learning_rate=1)
    with pytest.raises(FaeInputError, match="slice_score"):
        FAE(slice_score="mean")


def test_tail_surprisal_reads_the_healthy_quantiles_and_keeps_growing():
    import math

    from fae.methods.fae.fusion import TailSurprisal

    values = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    tail = TailSurprisal()
    tail.fit(values)
    q99 = torch.quantile(values.double(), 0.99).float()
    assert float(tail(q99[None])) == pytest.approx(math.log(100), abs=0.02)
    grid = torch.linspace(-5, 10, 1001)
    s = tail(grid)
    assert (s.diff() >= 0).all() and float(s[0]) == pytest.approx(math.log(2), abs=1e-5)
    assert float(tail(torch.tensor([10.0]))) > float(tail(values.max()[None])) + 5, (
        "beyond the healthy maximum the surprisal goes on rising (no ties among bright lesions)"
    )
    tied = torch.cat(
        [torch.rand(100_000, generator=torch.Generator().manual_seed(1)), torch.ones(500)]
    )
    tail.fit(tied)  # the top 0.5 % all at 1.0, as with saturated intensities
    assert float(tail(torch.tensor([1.01]))) < 20, "tied top knots do not make the tail explode"
    with pytest.raises(RuntimeError, match="not fitted"):
        TailSurprisal()(torch.zeros(3))


def test_fusion_with_intensity_is_fitted_on_healthy_slices_and_round_trips(healthy, tmp_path):
    est = FAE(prep=PREP, progress=False, **{**TINY, "steps": 3, "fusion": "intensity"})
    est.fit(healthy, run_dir=tmp_path / "run")
    knots = est.model_.intensity_tail.knots
    assert (knots.diff() > 0).all(), "fitted on the calibration slices"
    images = healthy.images[:4].copy()
    fused = est.predict(images, healthy.masks[:4])
    structure = est.maps(images, healthy.masks[:4], est.model_.structure)
    surprisal = est.model_.intensity_tail(torch.from_numpy(images)).numpy()
    weight = 1 - np.exp(-est.model_.structure_tail(torch.from_numpy(structure)).numpy())
    brain = healthy.masks[:4]
    assert weight[brain].min() >= 0.5 - 1e-6 and weight[brain].max() < 1
    assert weight[brain].max() > 0.9, "where the structure is unusual, intensity counts ~fully"
    expected = surprisal * weight
    np.testing.assert_allclose(fused[brain], expected[brain], rtol=1e-5, atol=1e-5)
    brighter = images.copy()
    brighter[brain] = np.minimum(brighter[brain] + 0.3, 1)
    assert est.predict(brighter, brain)[brain].mean() > fused[brain].mean()
    loaded = FAE.load(tmp_path / "run", progress=False)
    np.testing.assert_allclose(loaded.predict(images, brain), fused, atol=1e-5)


def test_fusion_can_be_added_to_a_run_trained_without_it(healthy):
    """Fusion changes only the map: a run trained without it, given fusion afterwards, maps
    exactly as the same run trained with it; the original estimator is left unchanged."""
    params = {**TINY, "steps": 3}
    plain = FAE(prep=PREP, progress=False, **params).fit(healthy)
    fused = FAE(prep=PREP, progress=False, **{**params, "fusion": "intensity"}).fit(healthy)
    calibration = healthy.take(np.arange(len(healthy)) % 2 == 1)
    fused.calibrate(calibration)
    added = plain.with_maps(calibration, fusion="intensity")
    images, brain = healthy.images[:4], healthy.masks[:4]
    np.testing.assert_allclose(added.predict(images, brain), fused.predict(images, brain))
    assert added.calibration_ == fused.calibration_
    assert plain.config.fusion == "none" and not hasattr(plain.model_, "intensity_tail")
    back = added.with_maps(calibration, fusion="none")
    np.testing.assert_array_equal(back.predict(images, brain), plain.predict(images, brain))


def test_dark_weight_scales_each_centred_map_by_how_dark_the_tissue_is(healthy, tmp_path):
    """``dark_weight`` is fitted on the healthy calibration slices' intensities (no labels):
    1 for tissue darker than healthy tissue, 0.5 for the brighter half; the map is the centred
    map times it, then the median. It changes only the map: added to a run trained without it,
    it maps as the same run trained with it, and it round-trips through the checkpoint."""
    params = {**TINY, "steps": 3, "volume_center": 0.25, "slice_median": 3}
    est = FAE(prep=PREP, progress=False, **{**params, "dark_weight": True})
    est.fit(healthy, run_dir=tmp_path / "run")
    brain = healthy.masks
    weight = est.map_weight(healthy.images, brain)
    intensity = healthy.images[brain]
    w = weight[brain]
    assert w.min() >= 0.5 - 1e-6 and w.max() <= 1
    median = np.median(intensity)
    assert np.all(w[intensity >= median + 1e-3] == pytest.approx(0.5, abs=1e-3))
    darkest = intensity <= np.quantile(intensity, 0.001)
    assert w[darkest].min() > 0.99, "the darkest healthy tissue counts fully"
    order = np.argsort(intensity)
    assert np.all(np.diff(w[order]) <= 1e-6), "darker never weighs less"
    plain = FAE(prep=PREP, progress=False, **params).fit(healthy)
    centred = center_volumes(plain.maps(healthy.images, brain, plain.model_), brain, 0.25,
                             healthy.subject)  # fmt: skip
    expected = median_across_slices(
        centred * weight, brain, 3, healthy.subject, healthy.slice_index
    )
    np.testing.assert_allclose(est.predict(healthy), expected, rtol=1e-5, atol=1e-6)
    added = plain.with_maps(healthy, dark_weight=True)
    np.testing.assert_allclose(added.predict(healthy), est.predict(healthy), atol=1e-6)
    assert plain.map_weight(healthy.images, brain) is None and not plain.config.dark_weight
    loaded = FAE.load(tmp_path / "run", progress=False)
    np.testing.assert_allclose(loaded.predict(healthy), est.predict(healthy), atol=1e-6)


def test_dark_smooth_reads_the_darkness_off_the_smoothed_slice(healthy):
    """``dark_smooth`` fits the healthy tail on the healthy slices smoothed inside the brain and
    weights each map by the darkness of the slice smoothed alike: the same weights as the
    unsmoothed darkness weight fitted on, and applied to, smoothed slices; 0 is no smoothing."""
    params = {**TINY, "steps": 3, "volume_center": 0.25, "slice_median": 3, "dark_weight": True}
    est = FAE(prep=PREP, progress=False, **params).fit(healthy)
    brain = healthy.masks
    smooth = est.with_maps(healthy, dark_smooth=2.0)
    assert smooth.config.dark_smooth == 2.0
    smoothed = smooth_inside(healthy.images, brain, 2.0)
    on_smoothed = est.with_maps(replace(healthy, images=smoothed))
    got = smooth.map_weight(healthy.images, brain)
    np.testing.assert_allclose(got, on_smoothed.map_weight(smoothed, brain), atol=1e-6)
    assert not np.allclose(got, est.map_weight(healthy.images, brain)), "the weight changes"
    assert got[brain].min() >= 0.5 - 1e-6 and got[brain].max() <= 1
    same = est.with_maps(healthy, dark_smooth=0.0)
    np.testing.assert_array_equal(same.predict(healthy), est.predict(healthy))
    with pytest.raises(FaeInputError, match="dark_smooth must be at least 0"):
        FAE(prep=PREP, **{**params, "dark_smooth": -1.0})


def test_slice_median_maps_and_calibrates_per_volume(healthy):
    """``slice_median`` filters each subject's maps along its slices, in ``predict`` and in the
    calibration (thresholds of the filtered healthy maps); other settings cannot be swapped."""
    plain = FAE(prep=PREP, progress=False, **{**TINY, "steps": 2}).fit(healthy)
    calibration = healthy.take(np.arange(len(healthy)) % 3 != 0)  # gaps in every subject
    median = plain.with_maps(calibration, slice_median=3)
    expected = median_across_slices(
        plain.predict(healthy), healthy.masks, 3, healthy.subject, healthy.slice_index
    )
    np.testing.assert_array_equal(median.predict(healthy), expected)
    healthy_maps = median.predict(calibration)
    scores = median.slice_scores(healthy_maps, calibration.masks)
    assert median.calibration_ == calibrate_thresholds(
        healthy_maps, calibration.masks, scores, "healthy slices"
    )
    with pytest.raises(FaeInputError, match="not a map setting: lr"):
        plain.with_maps(calibration, lr=1.0)
    # the slice score changes no map, only the scores and their calibrated thresholds
    top25 = plain.with_maps(calibration, slice_score="top25")
    maps = plain.predict(calibration)
    np.testing.assert_array_equal(top25.predict(calibration), maps)
    scores = top25.slice_scores(maps, calibration.masks)
    assert (scores < plain.slice_scores(maps, calibration.masks)).all()
    assert top25.calibration_ == calibrate_thresholds(
        maps, calibration.masks, scores, "healthy slices"
    )


def test_volume_center_maps_whole_scans_and_calibrates_on_their_lesion_free_slices(
    healthy, tmp_path
):
    """``volume_center`` subtracts each scan's own quantile (taken over the whole scan, as in
    prediction); the thresholds then come from the lesion-free slices only, and training uses
    only those for its validation loss."""
    plain = FAE(prep=PREP, progress=False, **{**TINY, "steps": 2}).fit(healthy)
    segs = healthy.segs.copy()
    segs[::3, 28:36, 28:36] = True  # every third slice holds a "lesion"
    scans = replace(healthy, segs=segs)
    centred = plain.with_maps(scans, volume_center=0.25)
    expected = center_volumes(plain.predict(scans), scans.masks, 0.25, scans.subject)
    np.testing.assert_allclose(centred.predict(scans), expected, atol=1e-6)
    keep = ~scans.slice_labels
    maps, masks = centred.predict(scans)[keep], scans.masks[keep]
    assert centred.calibration_ == calibrate_thresholds(
        maps, masks, centred.slice_scores(maps, masks), "healthy slices"
    )
    partial = plain.with_maps(scans.lesion_free(), volume_center=0.25)
    assert partial.calibration_ != centred.calibration_, "the quantile saw the whole scans"
    # fit: the validation scans' lesion slices are neither in the loss nor in the thresholds
    fits = {}
    for name, val in (("whole", scans), ("free", scans.lesion_free())):
        est = FAE(prep=PREP, progress=False, **{**TINY, "steps": 2})
        fits[name] = est.fit(healthy, val, run_dir=tmp_path / name)
    assert fits["whole"].calibration_ == fits["free"].calibration_
    logs = [(tmp_path / name / "train_log.csv").read_text() for name in fits]
    val_loss = [log.splitlines()[-1].split(",")[2] for log in logs]
    assert val_loss[0] == val_loss[1] != "", logs


def test_fine_tuning_starts_from_a_trained_run_and_keeps_its_statistics(healthy):
    params = {**TINY, "standardize_features": True}
    source = FAE(prep=PREP, progress=False, **{**params, "steps": 6}).fit(healthy)
    site = healthy.take(np.arange(len(healthy)) % 2 == 0)  # stands in for another site
    other_seed = {**params, "steps": 2, "seed": 5}  # a fresh model would start elsewhere
    tuned = FAE(prep=PREP, progress=False, **other_seed).fit(site, init=source)
    scratch = FAE(prep=PREP, progress=False, **other_seed).fit(site)
    assert torch.equal(tuned.model_.feature_mean, source.model_.feature_mean)
    assert not torch.equal(scratch.model_.feature_mean, source.model_.feature_mean)

    def distance(a, b):
        ours, theirs = a.model_.autoencoder.parameters(), b.model_.autoencoder.parameters()
        pairs = zip(ours, theirs, strict=True)
        return sum(float((x - y).detach().abs().sum()) for x, y in pairs)

    numel = sum(p.numel() for p in source.model_.autoencoder.parameters())
    adam_reach = 2 * 1.5 * source.config.lr * numel  # two Adam steps move a weight ~lr each
    assert distance(tuned, source) < adam_reach < distance(scratch, source) / 10
    with pytest.raises(FaeInputError, match="another architecture"):
        FAE(prep=PREP, progress=False, **{**params, "hidden": [16, 32]}).fit(site, init=source)
