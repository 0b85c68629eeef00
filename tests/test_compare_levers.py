"""``benchmarks/compare_levers.py``'s learning-curve figure, which the README shows: a method
keeps one colour in every panel, also where a panel lacks some methods (those without a
validation loss), and the legend names every curve."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from conftest import benchmark_script

METRIC_KEYS = ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc")


@pytest.fixture(scope="module")
def compare_levers():
    return benchmark_script("compare_levers")


def row(seed: int, value: float, val_loss: str) -> dict:
    return {"seed": str(seed), "val_loss": val_loss, **{k: str(value) for k in METRIC_KEYS}}


def test_one_colour_per_method_in_every_panel(compare_levers):
    curves = {
        # untrained: no validation loss, so absent from the first panel
        "threshold": {s: [row(0, 0.05, ""), row(1, 0.05, "")] for s in (2000, 10000)},
        "fae": {
            s: [row(0, 0.1 + s / 1e5, "0.4"), row(1, 0.12 + s / 1e5, "0.38")] for s in (2000, 10000)
        },
        "dfr": {s: [row(0, 0.07, str(5 - s / 4000))] for s in (2000, 10000)},
        "single-stage": {2000: [row(0, 0.3, "0.1")]},  # no curve at all
    }
    fig = compare_levers.draw_curves(curves, "test")
    colour_of: dict[str, set[str]] = {}
    methods_per_panel = []
    for ax in fig.axes:
        lines = ax.get_lines()
        methods_per_panel.append(len(lines))
        for line in lines:
            # each curve's y values identify its method
            y0 = round(float(line.get_ydata()[0]), 4)
            method = {0.05: "threshold", 0.13: "fae", 0.07: "dfr", 0.39: "fae", 4.5: "dfr"}[y0]
            colour_of.setdefault(method, set()).add(to_hex(line.get_color()))
    assert methods_per_panel == [2, 3, 3, 3, 3], "the validation-loss panel lacks thresholding"
    assert all(len(c) == 1 for c in colour_of.values()), colour_of
    assert len({next(iter(c)) for c in colour_of.values()}) == 3, "three methods, three colours"
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["threshold", "fae", "dfr"]
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        assert {to_hex(handle.get_color())} == colour_of[text.get_text()]
