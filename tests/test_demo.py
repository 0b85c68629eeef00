import json

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fae.data.discover import discover
from fae.data.slices import prepare_dataset
from fae.data.synthetic import make_synthetic
from fae.demo import run_demo
from fae.methods.base import load_method

from conftest import fae


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    """The README's main job from the command line, shortened to 2 steps on 5 subjects written
    at 2 mm beforehand, which the demo then uses (the next-but-one test checks that a new folder
    gets the demo's own data)."""
    make_synthetic(tmp_path / "data", 5, seed=0, modalities=("t1",), resolution_mm=2,
                   progress=False)  # fmt: skip
    r = fae("demo", "--out", tmp_path, "--subjects", 5, "--steps", 2)
    assert r.returncode == 0, r.stderr
    assert "| all | fae |" in r.stdout and "| all | threshold |" in r.stdout
    assert "| all | brain area | – | – | – |" in r.stdout
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 2
    assert set(saved["fae"]) == set(saved["threshold"]) == set(saved["brain area"])
    assert "all" in saved["fae"]
    assert 0 <= saved["fae"]["all"]["pixel_ap"] <= 1
    # the brain area's slice AUROC, against sklearn on the same test slices
    est = load_method(tmp_path / "run", progress=False)
    assert est.config.volume_center == 0.25 and est.config.slice_median == 3  # best for T1
    assert not est.config.dark_weight, "the demo leaves the darkness weight off"
    slices = prepare_dataset(
        discover(tmp_path / "data" / "datalist.csv"), "t1", est.prep, tmp_path / "cache",
        est.meta["splits"]["test"], False,
    )  # fmt: skip
    area = slices.masks.reshape(len(slices.masks), -1).sum(1)
    expected = roc_auc_score(slices.slice_labels, area)
    assert abs(saved["brain area"]["all"]["slice_auroc"] - expected) < 1e-12
    for name in (
        "fae_slices.png",
        "threshold_slices.png",
        "run/checkpoint.pt",
        "data/datalist.csv",
    ):
        assert (tmp_path / name).exists(), name
    trained = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    again = run_demo(tmp_path, n_subjects=5, steps=2)  # finished run: nothing is retrained
    assert again["fae"]["all"] == saved["fae"]["all"]
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == trained


def test_make_synthetic_from_the_command_line(tmp_path):
    r = fae("make-synthetic", tmp_path / "cli", "--subjects", 3, "--seed", 4, "--modalities", "t1",
            "--resolution-mm", 2)  # fmt: skip
    assert r.returncode == 0 and "wrote 3 subjects" in r.stdout, r.stderr
    make_synthetic(tmp_path / "lib", 3, seed=4, modalities=("t1",), resolution_mm=2, progress=False)
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "lib").iterdir())
    assert "datalist.csv" in names and sum(n.endswith("_t1.nii.gz") for n in names) == 3
    for name in names:
        if name.endswith(".nii.gz"):
            cli, lib = nib.load(tmp_path / "cli" / name), nib.load(tmp_path / "lib" / name)
            assert cli.header.get_zooms()[:3] == (2, 2, 2), name
            np.testing.assert_array_equal(cli.get_fdata(), lib.get_fdata(), err_msg=name)
    r = fae("make-synthetic", tmp_path / "x", "--subjects", 0)
    assert r.returncode == 2 and "--subjects must be at least 1" in r.stderr
    r = fae("make-synthetic", tmp_path / "x", "--resolution-mm", 3)
    assert r.returncode == 2 and "resolution_mm must be one of (1, 2), got 3" in r.stderr
    assert not (tmp_path / "x").exists()


def test_demo_standardises_features_unless_told_not_to():
    """The demo's default (1,000 steps, standardised features, the best T1 map settings but not
    the darkness weight) and the switches."""
    from fae.cli import parser
    from fae.demo import DEMO_PARAMS, DEMO_STEPS
    from fae.methods.registry import method_class

    assert DEMO_STEPS == 1000
    best = method_class("fae").map_settings("best", "t1")
    assert best["dark_weight"] and not DEMO_PARAMS["dark_weight"]
    assert DEMO_PARAMS["volume_center"] == best["volume_center"] == 0.25
    assert best["slice_score"] == "top25" and DEMO_PARAMS["slice_score"] == "top10"
    assert best["slice_median"] == 5 and DEMO_PARAMS["slice_median"] == 3
    assert DEMO_PARAMS["dark_smooth"] == 0
    assert parser().parse_args(["demo"]).dark_weight is False
    assert parser().parse_args(["demo", "--dark-weight"]).dark_weight is True
    assert parser().parse_args(["demo"]).standardize_features is True
    off = parser().parse_args(["demo", "--no-standardize-features"])
    assert off.standardize_features is False


def test_demo_dark_weight_reaches_the_run(tmp_path, monkeypatch):
    """``--dark-weight`` is the one way the demo's run gets the darkness weight; a new folder
    gets the demo's own synthetic data (the end-to-end test brings smaller data of its own)."""
    import fae.demo as demo

    class Trained(Exception):
        pass

    def train_or_resume(spec, run, cache):
        raise Trained(spec.params)

    written = []
    monkeypatch.setattr(demo, "make_synthetic", lambda *a, **k: written.append((a, k)))
    monkeypatch.setattr(demo, "train_or_resume", train_or_resume)
    for dark in (False, True):
        with pytest.raises(Trained) as trained:
            demo.run_demo(tmp_path / str(dark), dark_weight=dark)
        params = trained.value.args[0]
        assert params["dark_weight"] is dark and params["volume_center"] == 0.25
        own = ((tmp_path / str(dark) / "data", 12), {"seed": 0, "modalities": ("t1",)})
        assert written.pop() == own, "a new folder gets the demo's own data: 12 subjects, 1 mm"


def test_demo_precision_reaches_the_run(tmp_path, monkeypatch):
    """``--precision`` sets the run's arithmetic; without it the run keeps the method's own
    default (auto), so the printed table of a given CPU does not change."""
    import fae.demo as demo
    from fae.cli import parser
    from fae.methods.registry import method_class

    class Trained(Exception):
        pass

    def train_or_resume(spec, run, cache):
        raise Trained(spec.params)

    monkeypatch.setattr(demo, "make_synthetic", lambda *a, **k: None)
    monkeypatch.setattr(demo, "train_or_resume", train_or_resume)
    for precision in (None, "fp32", "bf16"):
        with pytest.raises(Trained) as trained:
            demo.run_demo(tmp_path / str(precision), precision=precision)
        params = trained.value.args[0]
        assert params.get("precision") == precision
    assert method_class("fae")().config.precision == "auto"
    assert parser().parse_args(["demo"]).precision is None
    assert parser().parse_args(["demo", "--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser().parse_args(["demo", "--precision", "fp16"])
