"""``benchmarks/protocol.py``'s record of each evaluation: what a rerun skips by and what the
README's tables are made from, so it must keep older rows and say which precision made a row."""

from __future__ import annotations

import json

import pytest

from conftest import benchmark_script


@pytest.fixture(scope="module")
def protocol():
    return benchmark_script("protocol")


def summary(value: float) -> dict:
    return {"pixel_ap": value, "dice_at_fpr": value, "best_dice": value, "slice_auroc": value}


def test_records_keep_older_rows_and_name_their_precision(protocol, tmp_path):
    results, run = tmp_path / "results", tmp_path / "run"
    run.mkdir()
    (run / "train_log.csv").write_text("step,loss,val_loss\n1000,0.5,0.4321\n")
    results.mkdir()
    # a curve written before rows named their precision
    old = "method,seed,steps,subjects,val_loss,pixel_ap,dice_at_fpr,best_dice,slice_auroc\n"
    old += "fae,0,1000,select,0.45,0.2,0.2,0.2,0.8\n"
    (results / "curve.csv").write_text(old)
    per_subject = [{"subject": "a", "dice_at_fpr": 0.5}]
    for subjects in ("select", "test"):
        protocol._record(results, "fae", 1, 1000, subjects, summary(0.3), per_subject, run, "fp32")
    rows = protocol._rows(results)
    assert [(r["seed"], r["subjects"], r["precision"]) for r in rows] == [
        ("0", "select", ""),  # unknown: kept as it was
        ("1", "select", "fp32"),
        ("1", "test", "fp32"),
    ]
    assert rows[1]["val_loss"] == "0.4321" and rows[1]["pixel_ap"] == "0.300000"
    record = json.loads((results / "fae" / "seed1" / "test-1000.json").read_text())
    assert record["precision"] == "fp32" and record["per_subject"] == per_subject
    assert protocol._done(results, "fae", 1, 1000)
    assert not protocol._done(results, "fae", 0, 1000), "a row without its evaluation JSON"
    # recording the same evaluation again replaces its row, it does not add one
    protocol._record(results, "fae", 1, 1000, "test", summary(0.4), per_subject, run, "bf16")
    rows = protocol._rows(results)
    assert len(rows) == 3 and rows[-1]["precision"] == "bf16" and rows[-1]["pixel_ap"] == "0.400000"


def test_the_best_presets_map_settings_name_their_rows(protocol):
    """FAE's runs with the ``best`` map settings are recorded as ``fae+<settings>``, one name per
    setting, so that a changed preset gets rows of its own (and retrains a lost run for them)."""
    changes = {"fusion": "intensity", "volume_center": 0.25, "slice_median": 3}
    assert protocol.best_label(changes) == "fae+fusion+center25+median3"
    dark = {"dark_weight": True, "volume_center": 0.25, "slice_median": 3}
    assert protocol.best_label(dark) == "fae+dark+center25+median3"
    assert set(protocol._best_changes("flair")) == {"fusion", "volume_center", "slice_median"}
    t1 = protocol._best_changes("t1")
    assert protocol.best_label(t1) == "fae+dark+smooth6+center25+median5+top25", "best for T1"


def test_only_seeds_picks_the_seeds_and_refuses_others(protocol, tmp_path, monkeypatch, capsys):
    """``--only-seeds`` runs those seeds, stage by stage, in the order given; a seed outside
    ``--seeds`` or a malformed list stops before anything is written or trained;
    ``--no-comparison`` trains without writing the comparison tables."""
    calls = []
    monkeypatch.setattr(
        protocol, "_stage", lambda out, res, mod, meth, seed, steps, *a: calls.append((seed, steps))
    )
    results = tmp_path / "results"
    argv = ["protocol.py", "--out", str(tmp_path / "out"), "--results", str(results)]
    argv += ["--modality", "t1", "--methods", "fae", "--no-report", "--stages", "1000,2000"]
    monkeypatch.setattr("sys.argv", [*argv, "--seeds", "5", "--only-seeds", "3,1,3"])
    protocol.main()
    assert calls == [(3, 1000), (1, 1000), (3, 2000), (1, 2000)]
    calls.clear()
    monkeypatch.setattr("sys.argv", [*argv, "--seeds", "2"])
    protocol.main()
    assert calls == [(0, 1000), (1, 1000), (0, 2000), (1, 2000)], "without it: every seed"
    written = []
    monkeypatch.setattr(protocol, "write_comparison", lambda *a: written.append(a[-1]) or {})
    monkeypatch.setattr("sys.argv", [*argv, "--seeds", "2", "--no-comparison"])
    protocol.main()
    assert written == [], "--no-comparison leaves the tables as they are"
    monkeypatch.setattr("sys.argv", [*argv, "--seeds", "2"])
    protocol.main()
    assert written == ["select", "test"], "else both comparisons are written"
    trained = len(calls)
    capsys.readouterr()
    other = tmp_path / "other"
    argv[4] = str(other)
    for bad, message in (("3,5", "each must be below --seeds 5"), ("3,x", "not a comma-separated")):
        monkeypatch.setattr("sys.argv", [*argv, "--seeds", "5", "--only-seeds", bad])
        with pytest.raises(SystemExit) as exit_:
            protocol.main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", [*argv, "--summary", "--no-comparison"])
    with pytest.raises(SystemExit) as exit_:
        protocol.main()
    assert exit_.value.code == 2 and "exclude each other" in capsys.readouterr().err
    assert not other.exists() and len(calls) == trained, "nothing written or trained if bad"


def test_the_comparison_is_kept_per_stage_over_the_seeds_every_method_has(
    protocol, tmp_path, capsys
):
    """Each stage's comparison has a folder of its own (the 10,000-step one does not replace the
    2,000-step one); it covers the seeds every method asked for has there, and FAE's ``best`` map
    settings recorded for fewer seeds (a former preset) are left out and said so."""
    results, run = tmp_path / "results", tmp_path / "run"
    run.mkdir()
    per_subject = [{"subject": "a", "lesion_pixels": 10, "dice_at_fpr": 0.5}]
    recorded = {"fae": 3, "threshold": 4, "fae+dark": 2, "fae+top25": 3}  # seeds 0..n-1
    for steps in (2000, 10_000):
        for method, n in recorded.items():
            for seed in range(n):
                value = 0.1 * seed + (0.3 if method.startswith("fae") else 0.0) + steps / 1e5
                curve = {"recall": [0.0, 1.0], "precision": [1.0, value]}  # for pr_curves.png
                for subjects in ("select", "test"):
                    protocol._record(results, method, seed, steps, subjects,
                                     {**summary(value), "pr_curve": curve}, per_subject, run,
                                     "fp32")  # fmt: skip
    extra = protocol._extra_labels(results, ["fae", "threshold"])
    assert extra == ["fae+dark", "fae+top25"]
    assert protocol._extra_labels(results, ["threshold"]) == [], "FAE's rows only beside FAE"
    table = protocol.write_comparison(results, ["fae", "threshold"], extra, 5, 10_000, "test")
    assert list(table) == ["fae", "threshold", "fae+top25"]
    assert all(table[m]["seeds"] == 3 for m in table), "the seeds all three have: 0-2"
    assert table["threshold"]["pixel_ap"]["mean"] == pytest.approx(0.1 + 0.1)
    assert "fae+dark lack one of seeds [0, 1, 2]: left out" in capsys.readouterr().out
    assert (results / "test-10000" / "results.md").exists()
    assert (results / "test-10000" / "fae+top25" / "results.md").exists()
    assert not (results / "test-2000").exists(), "another stage's tables are left alone"
    assert protocol.write_comparison(results, ["fae", "vae"], extra, 5, 2000, "test") == {}
