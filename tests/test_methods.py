"""Every method on tiny data: fit, maps, checkpoint round trip, exact resume; ``fae benchmark``."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from fae.benchmark import format_markdown, merge_summaries, method_params, summarize
from fae.data.preprocess import PrepConfig
from fae.data.synthetic import make_synthetic
from fae.errors import FaeInputError
from fae.methods.base import AnomalyMethod, load_method
from fae.methods.registry import METHODS, method_class

from conftest import fae

PREP = PrepConfig(size=64)
TINY = {
    "random": {},
    "threshold": {},
    "bm": {},
    "ae-mse": {"hidden": [8, 16], "latent": 16, "batch_size": 8, "steps": 4},
    "ae-ssim": {"hidden": [8, 16], "latent": 16, "batch_size": 8, "steps": 4},
    "vae": {"hidden": [8, 16], "latent": 16, "batch_size": 8, "steps": 4},
    "fanogan": {"dim": 4, "latent": 8, "batch_size": 8, "steps": 4, "gan_steps": 2},
    "dfr": {"backbone": "efficientnet-lite0", "latent": 8, "batch_size": 4, "steps": 4},
    "fae": {
        "backbone": "efficientnet-lite0",
        "hidden": [8, 16],
        "batch_size": 8,
        "steps": 4,
        "train_batchnorm": False,
    },
}


@pytest.fixture(scope="module")
def slices():
    """Healthy training-like slices: a bright disc with texture on a dark background."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :64]
    disc = (x - 32) ** 2 + (y - 32) ** 2 < 26**2
    images = np.where(disc, 0.5 + 0.1 * rng.standard_normal((30, 64, 64)), 0.0)
    return np.clip(images, 0, 1).astype(np.float32)


def test_registry_knows_every_method_in_the_issue():
    assert set(METHODS) == set(TINY)
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, AnomalyMethod) and cls.name == name and cls.__doc__
    with pytest.raises(FaeInputError, match="unknown method 'nope'"):
        method_class("nope")


@pytest.mark.parametrize("name", list(TINY))
def test_method_fits_maps_and_round_trips(name, slices, tmp_path):
    est = method_class(name)(prep=PREP, progress=False, **TINY[name])
    est.fit(slices[:24], slices[24:], run_dir=tmp_path / "run")
    maps = est.predict(slices[:4])
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and not maps[slices[:4] == 0].any(), "0 outside the brain"
    pixel = est.calibration_["pixel"]
    assert pixel["0.001"] >= pixel["0.01"] >= pixel["0.05"]
    # the run folder's checkpoint loads safely, as the right class, with the same maps
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["method"] == name
    loaded = load_method(tmp_path / "run", progress=False)
    assert type(loaded) is type(est)
    np.testing.assert_allclose(loaded.predict(slices[:4]), maps, atol=1e-5)


def test_dfr_latent_size_from_pca(slices, tmp_path):
    from fae.methods.dfr import latent_channels

    # three independent channels of variance 3, 2 and 1: 50 %, 83 %, 100 % cumulative
    rng = np.random.default_rng(0)
    basis = torch.from_numpy(rng.standard_normal((20000, 3)) * np.sqrt([3.0, 2.0, 1.0]))
    feats = (basis @ torch.eye(3, 5, dtype=torch.float64)).T.reshape(1, 5, 100, 200)
    assert latent_channels(feats, 0.9) == 2 and latent_channels(feats, 0.8) == 1
    settings = {**TINY["dfr"], "latent": None, "pca_slices": 6}
    est = method_class("dfr")(prep=PREP, progress=False, **settings)
    est.fit(slices[:24], slices[24:], run_dir=tmp_path / "run")
    assert 1 <= est.config.latent < est.model_.extractor.out_channels
    assert load_method(tmp_path / "run", progress=False).config.latent == est.config.latent
    # chosen again on refit, reproducibly even for an unpretrained extractor; a given size stays
    random = method_class("dfr")(prep=PREP, progress=False, **{**settings, "weights": None})
    assert random.choose_latent(slices[:24]) == random.choose_latent(slices[:24])
    # against scikit-learn's PCA of the features of the evenly spaced slices it names
    images = torch.from_numpy(slices[:24, None].astype(np.float32))
    pick = np.round(np.linspace(0, 23, settings["pca_slices"])).astype(int)
    with torch.no_grad():
        feats = est.model_.extractor.eval()(images[pick])
    pca = PCA(svd_solver="full").fit(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    held = np.cumsum(pca.explained_variance_ratio_) <= est.config.latent_variance
    assert est.choose_latent(slices[:24]) == max(1, int(held.sum())) == est.config.latent
    assert est.latent_from_data_
    fixed = method_class("dfr")(prep=PREP, progress=False, **TINY["dfr"]).fit(slices[:24])
    assert fixed.config.latent == 8 and not hasattr(fixed, "latent_from_data_")
    # the reference's autoencoder: the latent and output convolutions are linear (no BN/ReLU)
    layers = list(est.model_.autoencoder)
    assert isinstance(layers[-1], torch.nn.Conv2d) and layers[-1].bias is not None
    assert sum(isinstance(m, torch.nn.ReLU) for m in layers) == 4


@pytest.mark.parametrize("name", ["ae-mse", "ae-ssim", "vae", "fanogan", "dfr", "fae"])
def test_resume_gives_identical_weights(name, slices, tmp_path):
    cls = method_class(name)
    params = {**TINY[name], "steps": 6, "checkpoint_every": 3}
    if name == "fanogan":
        params["gan_steps"] = 2  # stopped and resumed in the encoder phase
    if name == "fae":
        params["standardize_features"] = True
    full = cls(prep=PREP, progress=False, **params).fit(slices[:24], slices[24:])
    short = cls(prep=PREP, progress=False, **{**params, "steps": 3})
    short.fit(slices[:24], slices[24:], run_dir=tmp_path / "run")
    # pretend the run was configured for 6 steps and stopped at 3
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["steps"] = 6
    del ckpt["calibration"]
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    resumed = cls.resume(tmp_path / "run", slices[:24], slices[24:], progress=False)
    assert resumed.step_ == 6
    resumed_state = resumed.model_.state_dict()
    for key, value in full.model_.state_dict().items():
        assert torch.equal(value, resumed_state[key]), key
    # a finished 3-step run trained longer: the same weights as 6 steps in one go
    finished = cls(prep=PREP, progress=False, **{**params, "steps": 3})
    finished.fit(slices[:24], slices[24:], run_dir=tmp_path / "done")
    again = cls.resume(tmp_path / "done", slices[:24], slices[24:], progress=False)
    assert again.step_ == 3, "resuming a finished run trains nothing (and keeps its state)"
    extended = cls.resume(tmp_path / "done", slices[:24], slices[24:], progress=False, steps=6)
    assert extended.step_ == 6 and extended.is_finished and extended.config.steps == 6
    extended_state = extended.model_.state_dict()
    for key, value in full.model_.state_dict().items():
        assert torch.equal(value, extended_state[key]), key
    with pytest.raises(FaeInputError, match="trained 6 steps already"):
        cls.resume(tmp_path / "done", slices[:24], slices[24:], progress=False, steps=5)


def test_bm_is_the_per_pixel_z_score(slices):
    est = method_class("bm")(prep=PREP, progress=False).fit(slices[:24])
    mean = slices[:24].astype(np.float64).mean(axis=0)
    std = slices[:24].astype(np.float64).std(axis=0, ddof=1) + 1e-7
    expected = np.where(slices[24] > 0, np.abs(slices[24] - mean) / std, 0)
    np.testing.assert_allclose(est.predict(slices[24:25])[0], expected, rtol=1e-4, atol=1e-4)


def test_random_maps_do_not_depend_on_batching(slices):
    est = method_class("random")(prep=PREP, progress=False).fit(slices[:4])
    np.testing.assert_array_equal(
        est.predict(slices[:6], batch_size=2), est.predict(slices[:6], batch_size=6)
    )


def test_vae_map_is_the_kl_gradient_weighted_residual(slices):
    est = method_class("vae")(prep=PREP, progress=False, **TINY["vae"]).fit(slices[:24])
    x = torch.from_numpy(slices[24:26])[:, None]
    module = est.model_.eval()
    x_grad = x.clone().requires_grad_(True)
    reconstruction, mu, logvar = module.reconstruct_with_latent(x_grad)
    (grad,) = torch.autograd.grad(module.kl(mu, logvar).sum(), x_grad)
    assert grad.abs().sum() > 0
    maps = est.predict(slices[24:26])
    residual = ((x - reconstruction.detach()) ** 2)[:, 0].numpy()
    assert (maps <= residual * 1.0001 + 1e-7).all(), "the weight lies in [0, 1]"
    share = maps.sum() / residual.sum()
    print(f"VAE map / residual: {share:.3f}")
    assert (maps >= 0).all() and share > 0.05, "and is not zero: it keeps a share of the residual"


def test_method_params_give_fanogan_half_the_budget_and_overrides_win():
    assert method_params("fanogan", 3, 100, {}) == {"seed": 3, "steps": 100, "gan_steps": 50}
    assert method_params("fanogan", 0, None, {"steps": 40})["gan_steps"] == 20
    assert method_params("fanogan", 0, 100, {"gan_steps": 10})["gan_steps"] == 10
    assert method_params("threshold", 1, 100, {}) == {"seed": 1}
    assert method_params("fae", 0, 100, {"steps": 7, "lr": 1e-3}) == {
        "seed": 0,
        "steps": 7,
        "lr": 1e-3,
    }


def test_summary_welch_test_against_fae():
    def run(ap):
        return {"pixel_ap": ap, "dice_at_fpr": ap, "best_dice": ap, "slice_auroc": ap}

    summary = summarize(
        {"fae": [run(0.5), run(0.52), run(0.51)], "threshold": [run(0.2), run(0.21), run(0.19)]}
    )
    assert summary["fae"]["pixel_ap"]["mean"] == pytest.approx(0.51)
    assert summary["threshold"]["pixel_ap"]["std"] == pytest.approx(0.01)
    assert summary["threshold"]["welch_p"]["pixel_ap"] < 1e-3
    assert "welch_p" not in summary["fae"]
    # a method rerun elsewhere replaces its row; the test against FAE is redone
    rerun = summarize({"threshold": [run(0.5), run(0.52), run(0.51)]})
    merged = merge_summaries([summary, rerun])
    assert list(merged) == ["fae", "threshold"]
    assert merged["threshold"]["pixel_ap"]["mean"] == pytest.approx(0.51)
    assert merged["threshold"]["welch_p"]["pixel_ap"] == pytest.approx(1.0)
    assert summary["threshold"]["welch_p"]["pixel_ap"] < 1e-3, "inputs untouched"
    # another reference row: every other row is tested against it, and the table says so
    against = summarize({"a": [run(0.9), run(0.91)], **summary_runs(run)}, reference="a")
    assert "welch_p" not in against["a"] and "welch_p" in against["fae"]
    assert against["fae"]["welch_p"]["pixel_ap"] < 0.01
    assert "Welch t-test of a against" in format_markdown(against, reference="a")
    assert "Welch t-test of FAE against" in format_markdown(summary)


def summary_runs(run):
    return {"fae": [run(0.5), run(0.52), run(0.51)], "threshold": [run(0.2), run(0.21)]}


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "data"
    kinds = ("hyperintense", "hypointense")
    make_synthetic(out, 6, seed=3, modalities=("t1",), resolution_mm=2, kinds=kinds, progress=False)
    return out / "datalist.csv"


def test_benchmark_command_writes_tables_figures_and_resumes(tiny_synthetic, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[fae]\nbackbone = "efficientnet-lite0"\nhidden = [8, 16]\nbatch_size = 8\n'
        "train_batchnorm = false\n"
        "[ae-mse]\nhidden = [8, 16]\nlatent = 16\nbatch_size = 8\n"
    )
    out = tmp_path / "bench"
    cmd = [
        sys.executable, "-m", "fae", "benchmark", "--data", tiny_synthetic, "--out", out,
        "--methods", "fae,threshold,ae-mse", "--seeds", "2", "--steps", "2",
        "--config", config, "--size", "64", "--cache-dir", tmp_path / "cache",
    ]  # fmt: skip
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"fae", "threshold", "ae-mse"}
    assert results["fae"]["seeds"] == 2 and len(results["fae"]["pixel_ap"]["values"]) == 2
    assert set(results["fae"]["by_kind"]) == {"hyperintense", "hypointense"}
    assert "welch_p" in results["threshold"]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["fae", "threshold", "ae-mse"]
    markdown = (out / "results.md").read_text()
    assert "| fae | 2 |" in markdown and "hypointense" in markdown
    for figure in ("bars.png", "pr_curves.png", "per_patient.png"):
        assert (out / figure).stat().st_size > 10_000
    # per-patient Dice@5%FPR: the mean over seeds of each run's per_subject.csv
    with (out / "per_patient.csv").open() as fh:
        patients = list(csv.DictReader(fh))
    for method in ("fae", "threshold", "ae-mse"):
        for row in patients:
            seeds = []
            for seed in (0, 1):
                with (out / f"runs/{method}/seed{seed}/eval/per_subject.csv").open() as fh:
                    seeds += [float(r["dice_at_fpr"]) for r in csv.DictReader(fh)
                              if r["subject"] == row["subject"]]  # fmt: skip
            assert len(seeds) == 2 and float(row[method]) == pytest.approx(np.mean(seeds), abs=1e-4)
    # and summed up per method: mean, median, patients with (next to) nothing found
    table = (out / "per_patient.md").read_text()
    for method in ("fae", "threshold", "ae-mse"):
        dice = np.array([float(row[method]) for row in patients])
        cells = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        n, mean, median, missed = cells.strip("| ").split(" | ")[1:]
        assert int(n) == len(patients) and int(missed) == int((dice < 0.01).sum())
        assert float(mean) == pytest.approx(dice.mean(), abs=2e-3)
        assert float(median) == pytest.approx(np.median(dice), abs=2e-3)
    metrics = json.loads((out / "runs/fae/seed1/eval/metrics.json").read_text())
    assert metrics["steps"] == 2
    # the whole comparison in one page: each method's map (seed 0) on its own calibrated scale
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
    assert [p["name"] for p in data["panels"]] == ["fae", "threshold", "ae-mse"]
    for panel in data["panels"]:
        scale = load_method(out / "runs" / panel["name"] / "seed0", progress=False).display_range()
        assert (panel["vmin"], panel["vmax"]) == pytest.approx(scale)
    subjects = metrics["n_subjects"]
    assert len(data["scans"]) == subjects and "<h2>Per-patient Dice@5%FPR</h2>" in page
    # a second invocation redoes nothing
    stamp = (out / "runs/fae/seed0/checkpoint.pt").stat().st_mtime_ns
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "== fae" not in r.stdout, r.stdout
    assert (out / "runs/fae/seed0/checkpoint.pt").stat().st_mtime_ns == stamp


def test_train_and_evaluate_any_method_from_the_command_line(tiny_synthetic, tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    r = fae("train", "--method", "bm", "--data", tiny_synthetic, "--out", run, "--size", "64",
            "--cache-dir", cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["method"] == "bm"
    r = fae("evaluate", "--run", run, "--data", tiny_synthetic, "--out", tmp_path / "eval",
            "--cache-dir", cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["pixel_ap"] <= 1 and set(metrics["by_kind"]) == {
        "hyperintense",
        "hypointense",
    }
    r = fae("train", "--method", "ae-mse", "--backbone", "resnet18", "--data", tiny_synthetic,
            "--out", tmp_path / "bad")  # fmt: skip
    assert r.returncode == 2 and "unknown setting(s) backbone" in r.stderr


def test_checkpoints_hold_only_plain_types(slices, tmp_path):
    est = method_class("bm")(prep=PREP, progress=False, seed=np.int64(3), lr=np.float32(1e-3))
    est.fit(slices[:8]).save(tmp_path / "bm.pt")
    loaded = load_method(tmp_path / "bm.pt", progress=False)  # weights_only=True inside
    assert loaded.config.seed == 3 and type(loaded.config.seed) is int


def test_settings_of_the_wrong_type_are_one_line_errors(tmp_path):
    from fae.config import read_config_file
    from fae.methods.fae import FAEConfig

    path = tmp_path / "c.yaml"
    path.write_text("lr: 2e-4\n")  # YAML 1.1 reads this as a string
    with pytest.raises(FaeInputError, match="wrong type"):
        FAEConfig.from_dict(read_config_file(path), path)


def test_benchmark_refuses_a_folder_run_with_other_settings(tiny_synthetic, tmp_path):
    from fae.benchmark import run_benchmark

    out = tmp_path / "bench"
    kwargs = {"prep": PREP, "cache_dir": tmp_path / "cache", "progress": False}
    run_benchmark(tiny_synthetic, out, ["threshold"], 1, "t1", **kwargs)
    with pytest.raises(FaeInputError, match="other preprocessing"):
        run_benchmark(
            tiny_synthetic, out, ["threshold"], 1, "t1", **{**kwargs, "prep": PrepConfig(size=32)}
        )


def test_dfr_trains_through_the_workflow_with_its_latent_from_data(tiny_synthetic, tmp_path):
    from fae.workflow import RunSpec, train_or_resume

    params = {"backbone": "efficientnet-lite0", "steps": 2, "batch_size": 4}
    spec = RunSpec(tiny_synthetic, "t1", "dfr", params, PREP)
    est = train_or_resume(spec, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["latent"] == est.config.latent >= 1


def test_runs_of_an_older_format_are_refused_naming_the_version(tmp_path, capsys):
    from fae.cli import main
    from fae.workflow import RunSpec, train_or_resume

    run = tmp_path / "run"
    run.mkdir()
    old = {"format": 1, "versions": {"fae": "0.1.0"}, "kind": "dfr", "model": {}, "config": {}}
    torch.save(old, run / "checkpoint.pt")
    expected = r"checkpoint format 1 \(written by fae 0\.1\.0\); this fae .* reads format 2"
    with pytest.raises(FaeInputError, match=expected):
        load_method(run)
    with pytest.raises(FaeInputError, match=expected):
        train_or_resume(RunSpec(tmp_path, "t1", "dfr", {"seed": 0}, PREP), run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "checkpoint format 1" in err
