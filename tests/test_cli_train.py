"""``fae train`` / ``fae evaluate`` from the command line, on a tiny synthetic dataset."""

import json
import subprocess
import sys
import urllib.error

import pytest
import torch

from fae.cli import main
from fae.data.synthetic import make_synthetic

from conftest import fae, head, write_nifti


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic(out, 4, seed=1, modalities=("t1",), resolution_mm=2, progress=False)
    return out / "datalist.csv"


def test_train_then_evaluate(tiny_data, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("hidden = [16, 32]\nbatch_size = 8\nlog_every = 1\nsteps = 50\n")
    run = tmp_path / "run"
    r = fae(
        "train",
        "--data",
        tiny_data,
        "--out",
        run,
        "--config",
        config,
        "--steps",
        "3",
        "--backbone",
        "efficientnet-lite0",
        "--size",
        "64",
        "--cache-dir",
        tmp_path / "cache",
        "--brain-mask",
        "nonzero",
    )
    assert r.returncode == 0, r.stderr
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["prep"]["brain_mask"] == "nonzero", "the brain-mask source is kept in the run"
    assert set(resolved["meta"]["brain_masks"]) == {"nonzero"}, "and how the masks were made"
    assert resolved["config"]["steps"] == 3, "flags override the config file"
    assert resolved["config"]["hidden"] == [16, 32] and resolved["prep"]["size"] == 64
    meta = resolved["meta"]
    assert set(meta["splits"]) == {"train", "val", "select", "test"} and meta["modality"] == "t1"
    assert meta["splits"]["select"] == [], "no selection patients unless asked for"
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,val_loss,seconds" and len(log) == 4
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["prep"]["size"] == 64 and "torch" in ckpt["versions"]
    assert ckpt["prep"]["brain_mask"] == "nonzero"

    r = fae("train", "--resume", run)
    assert r.returncode == 0 and "trained 3 steps" in r.stdout, r.stderr
    if not torch.cuda.is_available():  # --device reaches a resumed run too
        r = fae("train", "--resume", run, "--device", "cuda")
        assert r.returncode != 0 and "no CUDA GPU" in r.stderr, r.stderr

    out = tmp_path / "eval"
    r = fae(
        "evaluate",
        "--run",
        run,
        "--data",
        tiny_data,
        "--out",
        out,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # the command's numbers are the library's, for the run's test subjects
    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset
    from fae.methods.base import load_method

    est = load_method(run, progress=False)
    test = prepare_dataset(discover(tiny_data), "t1", est.prep, tmp_path / "cache",
                           meta["splits"]["test"], False)  # fmt: skip
    expected, _ = est.evaluate(test)
    for key in ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc", "slice_ap", "n_slices"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["subjects"] == meta["splits"]["test"]
    assert (out / "per_subject.csv").read_text().startswith("subject,slices,lesion_slices")
    assert (out / "slices.png").stat().st_size > 1000


def test_train_refuses_existing_run_and_bad_config(tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    r = fae(
        "train", "--data", tiny_data, "--out", tmp_path / "r", "--config", bad, "--no-pretrained"
    )
    assert r.returncode == 2 and "unknown setting(s) learning_rate" in r.stderr
    r = fae("train", "--out", tmp_path / "r")
    assert r.returncode == 2 and "needs --data and --out" in r.stderr
    r = fae("evaluate", "--run", tmp_path / "nothing", "--data", tiny_data, "--out", tmp_path / "e")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_missing_imagenet_weights_names_the_ways_out(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--weights" in err and "--no-pretrained" in err and str(tmp_path / "hub") in err
    assert not (tmp_path / "run").exists(), "nothing written before the model can be built"


def test_cli_precision_flags(tiny_data, tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "tiny.toml"
    config.write_text("hidden = [16, 32]\nbatch_size = 8\n")
    args = ["train", "--data", str(tiny_data), "--out", str(run), "--no-pretrained"]
    args += ["--config", str(config), "--size", "64", "--cache-dir", str(tmp_path / "cache")]
    args += ["--steps", "2", "--batchnorm", "frozen", "--precision", "fp32"]
    assert main(args) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["precision"] == "fp32" and saved["meta"]["precision"] == "fp32"
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data), "--out", str(out),
                 "--precision", "bf16", "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["precision"] == "bf16"


def test_train_longer_from_the_command_line(tiny_data, tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text("hidden = [16, 32]\nbatch_size = 8\nlog_every = 1\n")
    base = ["train", "--data", str(tiny_data), "--config", str(config), "--no-pretrained"]
    base += ["--batchnorm", "frozen", "--size", "64", "--cache-dir", str(tmp_path / "cache")]
    long, short = tmp_path / "long", tmp_path / "short"
    assert main([*base, "--out", str(long), "--steps", "4"]) == 0
    assert main([*base, "--out", str(short), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(short), "--steps", "4"]) == 0
    a = torch.load(long / "checkpoint.pt", weights_only=True)
    b = torch.load(short / "checkpoint.pt", weights_only=True)
    assert b["step"] == 4 and b["config"]["steps"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    steps = [line.split(",")[0] for line in (short / "train_log.csv").read_text().splitlines()]
    assert steps[1:] == ["1", "2", "3", "4"], "the log continues where the run stopped"
    capsys.readouterr()
    # the same command again finds the run finished; other settings in its folder are refused
    assert main([*base, "--out", str(short), "--steps", "4"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert main([*base, "--out", str(short), "--steps", "4", "--seed", "1"]) == 2
    assert "with seed=0, not 1: use another --out" in capsys.readouterr().err
    assert main(["train", "--resume", str(short), "--steps", "3"]) == 2
    assert "trained 4 steps already" in capsys.readouterr().err


def test_presets_fill_settings_that_config_and_flags_override(tiny_data, tmp_path, capsys):
    from fae.methods.registry import method_class

    base = ["train", "--data", str(tiny_data), "--size", "64", "--steps", "2"]
    base += ["--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--preset", "best", "--out", str(tmp_path / "best")]) == 0
    saved = json.loads((tmp_path / "best" / "config.json").read_text())["config"]
    assert saved["backbone"] == "efficientnet-lite0" and saved["standardize_features"]
    assert saved["fusion"] == "none" and not saved["train_batchnorm"], "best for T1: no fusion"
    assert saved["slice_median"] == 5, "best for T1: the median across 5 slices"
    assert saved["dark_smooth"] == 6.0, "best for T1: darkness read off the smoothed slice"
    assert saved["volume_center"] == 0.25, "best for T1: each scan centred"
    assert saved["dark_weight"], "best for T1: the centred map weighted by darkness"
    assert saved["slice_score"] == "top25", "best for T1: the top 25 % of a slice's map"
    assert saved["steps"] == 2, "a flag overrides the preset"
    out = tmp_path / "best-no-median"
    flags = ["--slice-median", "1", "--no-dark-weight", "--slice-score", "top10"]
    assert main([*base, "--preset", "best", *flags, "--out", str(out)]) == 0
    overridden = json.loads((out / "config.json").read_text())["config"]
    assert overridden["slice_median"] == 1 and not overridden["dark_weight"]
    assert overridden["slice_score"] == "top10"
    assert main([*base, "--slice-median", "2", "--out", str(tmp_path / "even")]) == 2
    assert "slice_median must be an odd number" in capsys.readouterr().err
    centre = ["--volume-center", "0.25", "--backbone", "efficientnet-lite0"]
    assert main([*base, *centre, "--out", str(tmp_path / "centred")]) == 0
    centred = json.loads((tmp_path / "centred/config.json").read_text())["config"]
    assert centred["volume_center"] == 0.25 and not centred["dark_weight"]
    assert main([*base, *centre, "--dark-weight", "--out", str(tmp_path / "dark")]) == 0
    assert json.loads((tmp_path / "dark/config.json").read_text())["config"]["dark_weight"]
    smooth = ["--dark-weight", "--dark-smooth", "1.5", "--out", str(tmp_path / "smooth")]
    assert main([*base, *centre, *smooth]) == 0
    assert json.loads((tmp_path / "smooth/config.json").read_text())["config"]["dark_smooth"] == 1.5
    assert main([*base, "--dark-smooth", "-1", "--out", str(tmp_path / "negative")]) == 2
    assert "dark_smooth must be at least 0" in capsys.readouterr().err
    assert main([*base, "--volume-center", "1", "--out", str(tmp_path / "q1")]) == 2
    assert "volume_center must be a quantile" in capsys.readouterr().err
    flair = method_class("fae").preset("best", "flair")
    assert flair["fusion"] == "intensity" and flair["volume_center"] == 0.25, "best for FLAIR"
    assert not flair["dark_weight"], "FLAIR lesions are bright: no darkness weight"
    assert flair["slice_score"] == "top10", "the top 25 % was measured on T1 only"
    assert flair["slice_median"] == 3 and flair["dark_smooth"] == 0, "5 slices: T1 only"
    assert not method_class("fae").preset("best", "t2")["dark_weight"], "measured on T1 only"
    paper = method_class("fae").preset("paper", "t1")
    assert (paper["backbone"], paper["weights"], paper["train_batchnorm"]) == (
        "resnet18",
        "imagenet",
        True,
    )
    assert main([*base, "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main([*base, "--method", "dfr", "--preset", "best", "--out", str(tmp_path / "y")]) == 2


def test_fine_tuning_from_the_command_line_records_where_it_started(tiny_data, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("hidden = [16, 32]\nbatch_size = 8\n")
    source, tuned = tmp_path / "source", tmp_path / "tuned"
    common = ["--data", str(tiny_data), "--size", "64", "--cache-dir", str(tmp_path / "cache")]
    args = ["train", *common, "--config", str(config), "--backbone", "efficientnet-lite0"]
    assert main([*args, "--batchnorm", "frozen", "--steps", "3", "--out", str(source)]) == 0
    assert main(["train", *common, "--init", str(source), "--steps", "2", "--out", str(tuned)]) == 0
    saved = json.loads((tuned / "config.json").read_text())
    assert saved["meta"]["init"] == str(source.resolve())
    assert saved["config"]["hidden"] == [16, 32] and saved["config"]["steps"] == 2
    assert saved["meta"]["split"]["test_fraction"] == 0.0, "every site scan trains or calibrates"
    assert saved["prep"]["size"] == 64


def test_train_with_no_usable_slices_says_why(tmp_path):
    data = tmp_path / "lesions"
    for k in range(4):
        image, _, brain = head(seed=k)
        write_nifti(data / f"s{k}_t1.nii.gz", image)
        write_nifti(data / f"s{k}_seg.nii.gz", brain)  # a lesion that fills the brain
    r = fae("train", "--method", "threshold", "--data", data, "--out", tmp_path / "run",
            "--size", "32", "--brain-mask", "nonzero", "--cache-dir", tmp_path / "c")  # fmt: skip
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"fae: error: {data}: no usable training slices in the 1 training ")
    assert "of their brain slices have lesions" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_two_processes_never_write_into_one_folder(tiny_data, tmp_path):
    from fae.errors import FaeInputError
    from fae.io import folder_lock

    run = tmp_path / "run"
    args = ("train", "--method", "threshold", "--data", tiny_data, "--out", run, "--size", "32",
            "--cache-dir", tmp_path / "c")  # fmt: skip
    with folder_lock(run):
        r = fae(*args)
        assert r.returncode == 2, r.stderr
        assert f"fae: error: {run}: in use by another fae process (pid" in r.stderr
    assert not run.exists(), "a folder that held nothing but the lock is removed"
    r = fae(*args)
    assert r.returncode == 0 and (run / "checkpoint.pt").exists(), r.stderr
    predictions = tmp_path / "predictions"
    with folder_lock(predictions):
        r = fae("predict", "--run", run, "--out", predictions, tiny_data)
        assert r.returncode == 2 and "in use by another fae process" in r.stderr, r.stderr
        assert not (predictions / "scores.csv").exists()
    # a process killed with SIGKILL while holding the lock leaves no stale lock behind
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fae.io import folder_lock; "
         "lock = folder_lock(sys.argv[1]); lock.__enter__(); print('held', flush=True); "
         "time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FaeInputError, match="in use by another fae process"), folder_lock(run):
            pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(run):
        pass


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """``fae train`` arguments (200 steps, checkpoints every 4) and the run they make: a small
    pixel autoencoder, the fastest learner (every method shares the training loop)."""
    root = tmp_path_factory.mktemp("stopped")
    config = root / "tiny.toml"
    config.write_text("hidden = [8, 16]\nlatent = 16\nbatch_size = 8\nlog_every = 1\n"
                      "checkpoint_every = 4\n")  # fmt: skip
    args = ["train", "--method", "ae-mse", "--data", tiny_data, "--config", config, "--size",
            "64", "--cache-dir", root / "cache", "--steps", "200"]  # fmt: skip
    whole = fae(*args, "--out", root / "whole")
    assert whole.returncode == 0, whole.stderr
    return [str(a) for a in args], root / "whole"


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_train_stopped_from_outside_resumes_exactly(uninterrupted, tmp_path, signal_name):
    """``fae train`` in its own process, stopped mid-run by Ctrl-C (it checkpoints where it
    is) or by SIGKILL (it dies; its last periodic checkpoint is there), then ``--resume``d from
    the command line: the same weights as a run that was never stopped."""
    import signal
    import time

    args, whole = uninterrupted
    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "fae", *args, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "train_log.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait for step 9
        if log.exists() and len(log.read_text().splitlines()) > 9:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(getattr(signal, signal_name))
    _, err = proc.communicate(timeout=120)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    if signal_name == "SIGINT":
        assert proc.returncode == 130 and f"fae train --resume {run}" in err
        assert 9 <= saved < 200, "checkpointed where it stopped"
    else:
        assert proc.returncode == -signal.SIGKILL
        assert saved % 4 == 0 and 8 <= saved < 200, "the last periodic checkpoint"
    resumed = fae("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert b["step"] == 200
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    rows = [line.split(",")[0] for line in log.read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(1, 201)], "the log continues where the run stopped"
