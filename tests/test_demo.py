import json

from fae.demo import run_demo


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    """The README's main job, shortened to 2 training steps on 5 subjects."""
    results = run_demo(tmp_path, n_subjects=5, steps=2)
    out = capsys.readouterr().out
    assert "| all | fae |" in out and "| all | threshold |" in out
    assert results["steps"] == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["fae"]) == set(saved["threshold"]) and "all" in saved["fae"]
    assert 0 <= saved["fae"]["all"]["pixel_ap"] <= 1
    for name in (
        "fae_slices.png",
        "threshold_slices.png",
        "run/checkpoint.pt",
        "data/datalist.csv",
    ):
        assert (tmp_path / name).exists(), name
    again = run_demo(tmp_path, n_subjects=5, steps=2)  # finished run: nothing is retrained
    assert again["fae"]["all"] == results["fae"]["all"]


def test_demo_standardises_features_unless_told_not_to():
    """The demo's default (1,000 steps, standardised features) and the switch to turn it off."""
    from fae.cli import parser
    from fae.demo import DEMO_STEPS

    assert DEMO_STEPS == 1000
    assert parser().parse_args(["demo"]).standardize_features is True
    off = parser().parse_args(["demo", "--no-standardize-features"])
    assert off.standardize_features is False
