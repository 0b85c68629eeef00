"""The layout's promises: a new method is one class plus one registry line, and nothing outside a
method's folder depends on it."""

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fae.benchmark import run_benchmark
from fae.config import TrainingConfig
from fae.data.preprocess import PrepConfig
from fae.data.synthetic import make_synthetic
from fae.methods import registry
from fae.methods.base import AnomalyMethod, load_method
from fae.nn.module import MapModule
from fae.workflow import RunSpec, evaluate_run, train_or_resume

SRC = Path(__file__).resolve().parents[1] / "src" / "fae"
PREP = PrepConfig(size=64)


@dataclass
class MeanImageConfig(TrainingConfig):
    """A toy method's settings: short training, small batches."""

    steps: int = 4
    batch_size: int = 8
    lr: float = 0.05


class MeanImageModule(MapModule):
    """Learns one image, the mean healthy slice; the residual is the squared difference."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, 1, size, size))

    def reconstruct(self, features: Tensor) -> Tensor:
        return self.mean.expand_as(features)

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        return (features - reconstruction) ** 2


class MeanImage(AnomalyMethod):
    """A toy method defined in a test file: the whole pipeline must work for it."""

    name = "mean-image"
    config_class = MeanImageConfig

    def build(self, load_weights: bool = True) -> MapModule:
        return MeanImageModule(self.prep.size)


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry.METHODS, MeanImage.name, MeanImage)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    make_synthetic(out, 4, seed=5, modalities=("t1",), resolution_mm=2, progress=False)
    return out / "datalist.csv"


def test_a_method_registered_from_outside_gets_the_whole_pipeline(toy_registered, data, tmp_path):
    run = tmp_path / "run"
    spec = RunSpec(data, "t1", "mean-image", {"steps": 2}, PREP, device="cpu")
    est = train_or_resume(spec, run, tmp_path / "cache", progress=False)
    assert isinstance(est, MeanImage) and est.step_ == 2 and est.is_finished
    assert float(est.model_.mean.detach().abs().sum()) > 0, "it learned"
    loaded = load_method(run, progress=False)
    assert type(loaded) is MeanImage and loaded.step_ == 2
    # trained longer through the same lifecycle, then evaluated and benchmarked
    longer = train_or_resume(
        RunSpec(data, "t1", "mean-image", {"steps": 4}, PREP), run, tmp_path / "cache", False
    )
    assert longer.step_ == 4
    summary = evaluate_run(
        run, data, tmp_path / "eval", cache_dir=tmp_path / "cache", progress=False
    )
    assert 0 <= summary["pixel_ap"] <= 1 and summary["steps"] == 4
    table = run_benchmark(
        data, tmp_path / "bench", ["mean-image"], 1, "t1", 2, prep=PREP,
        cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert table["mean-image"]["seeds"] == 1
    maps = longer.predict(np.zeros((2, 64, 64), np.float32) + 0.5)
    assert maps.shape == (2, 64, 64)


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_nothing_outside_a_method_folder_imports_it():
    folders = sorted(p.name for p in (SRC / "methods").iterdir() if (p / "__init__.py").exists())
    assert {"fae", "dfr", "fanogan", "ae", "vae", "statistics"} <= set(folders)
    for path in SRC.rglob("*.py"):
        inside = path.relative_to(SRC / "methods").parts[0] if "methods" in path.parts else None
        for module in _imports(path):
            parts = module.split(".")
            if parts[:2] == ["fae", "methods"] and len(parts) > 2 and parts[2] in folders:
                # only a method's own folder, or one building on it (vae on ae's network)
                allowed = {parts[2], "vae"} if parts[2] == "ae" else {parts[2]}
                assert inside in allowed, f"{path.relative_to(SRC)} imports {module}"


def test_every_method_keeps_config_module_and_estimator_in_its_folder():
    for name in registry.METHODS:
        cls = registry.method_class(name)
        folder = cls.__module__.split(".")[2]
        assert cls.__module__ == f"fae.methods.{folder}.estimator", name
        assert cls.config_class.__module__.startswith(f"fae.methods.{folder}."), name
        module = cls(prep=PREP, progress=False, **_buildable(name)).build(load_weights=False)
        assert type(module).__module__ == f"fae.methods.{folder}.torch_model", name


def _buildable(name: str) -> dict:
    return {"latent": 4} if name == "dfr" else {}


def test_weighted_mean_leaves_out_every_cell_touched_by_a_zero_weight():
    from fae.nn.module import weighted_mean

    residual = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    weight = torch.ones(2, 1, 16, 16)
    weight[0, 0, 5, 6] = 0  # one pixel: its whole 4×4 cell (1, 1) of the residual is out
    keep = torch.ones(2, 1, 4, 4)
    keep[0, 0, 1, 1] = 0
    expected = (residual * keep).sum() / (keep.sum() * 3)
    assert torch.allclose(weighted_mean(residual, weight), expected)
    assert torch.equal(weighted_mean(residual), residual.mean())


def test_masked_training_ignores_what_lies_under_the_grown_lesion(data, tmp_path):
    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset
    from fae.errors import FaeInputError
    from fae.methods.base import loss_weights

    dataset = discover(data)
    ill = [s.id for s in dataset.subjects if s.id.startswith("anomalous")]
    slices = prepare_dataset(dataset, "t1", PREP, tmp_path / "cache", ill, progress=False)
    assert slices.segs.any()
    params = {"steps": 3, "train_slices": "masked", "lesion_margin": 2}
    weight = loss_weights(slices, MeanImage(prep=PREP, progress=False, **params).config)
    assert weight.shape == (len(slices), 1, 64, 64)
    assert not weight[torch.from_numpy(slices.segs)[:, None]].any(), "the lesion never counts"
    assert weight.float().mean() < 1 - slices.segs.mean(), "and neither does its grown rim"
    changed = slices.take(np.ones(len(slices), bool))
    changed.images[weight[:, 0].numpy() == 0] = 1.0  # anything at all under the grown lesion
    a = MeanImage(prep=PREP, progress=False, **params).fit(slices)
    b = MeanImage(prep=PREP, progress=False, **params).fit(changed)
    assert torch.equal(a.model_.mean, b.model_.mean)
    plain = MeanImage(prep=PREP, progress=False, steps=3).fit(changed)
    assert not torch.equal(plain.model_.mean, b.model_.mean), "unmasked, the lesion would count"
    with pytest.raises(FaeInputError, match="masked"):
        registry.method_class("fanogan")(prep=PREP, train_slices="masked")
