"""Named sets of FAE settings: ``paper`` (the publication) and ``best`` (what the measurements
on the LGG selection patients chose, per modality; see the README, "Presets")."""

from __future__ import annotations

from fae.errors import FaeInputError

PAPER = {
    "backbone": "resnet18",
    "layers": None,  # layer0, layer1, layer2
    "weights": "imagenet",
    "train_batchnorm": True,  # the authors' code leaves the extractor's BatchNorm training
    "standardize_features": False,
    "fusion": "none",
    "dark_weight": False,
    "dark_smooth": 0.0,
    "hidden": [100, 150, 200, 300],
    "dropout": 0.1,
    "lr": 2e-4,
    "batch_size": 32,
    "steps": 10_000,
    "slice_score": "top10",
    "volume_center": 0.0,
    "slice_median": 1,
}
# EfficientNet-Lite0 (ImageNet weights offline), frozen BatchNorm (features computed once),
# standardised features, each scan's map centred on its own 25 % quantile, then the median of
# the map over 3 neighbouring slices; on FLAIR fused with the intensity evidence, on T1 not:
# there the centred map is weighted by how dark each pixel is for healthy tissue instead (read
# off the slice smoothed inside the brain), the median is over 5 slices, and a slice is scored
# by the mean of its top 25 % of map values (top 10 % in the paper).
# EfficientNet-Lite1 was measured on T1 and not kept: with centring it lowered the selection
# patients' Dice@5%FPR by more than the seed spread.
_BEST = {
    **PAPER,
    "backbone": "efficientnet-lite0",
    "train_batchnorm": False,
    "standardize_features": True,
    "volume_center": 0.25,
    "slice_median": 3,
}
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"*": PAPER},
    "best": {
        "flair": {**_BEST, "fusion": "intensity"},
        "t1": {
            **_BEST,
            "dark_weight": True,
            "dark_smooth": 6.0,  # pixels of the 128×128 slice
            "slice_median": 5,
            "slice_score": "top25",
        },
        "*": _BEST,  # modalities not measured (T2, PD...) and data that names none
    },
}


def preset(name: str, modality: str | None) -> dict:
    """The settings of preset ``name`` for ``modality`` (its own entry, else the default)."""
    if name not in PRESETS:
        raise FaeInputError(None, f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    table = PRESETS[name]
    return dict(table.get(modality or "*", table["*"]))
