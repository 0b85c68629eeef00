"""A trained run as one ONNX file (``fae export``), and predictions from it without PyTorch
(``fae predict --onnx``).

The file holds the run's whole slice → map network in fp32 with a dynamic batch: (N, 1, S, S)
prepared slices in [0, 1] → (N, 1, S, S) maps (for FAE: the frozen extractor, the feature
standardisation, the autoencoder, 1 − SSIM per feature channel, its channel mean, the
upsampling to the slice, and with fusion the healthy surprisals; with ``dark_weight`` a second
output, ``weights``, the weight of each centred map value, computed from the slices as given:
with ``dark_smooth`` they must be smoothed first, as :meth:`ExportedModel.predict` does with
:func:`fae.postprocess.smooth_inside`, which needs the brain mask the graph has not). What a
map needs around the network rides in the model's metadata under ``fae.run``: the run's record
(method, config, preprocessing, meta), its calibrated thresholds and trained steps.
:class:`ExportedModel` reads it back and does around onnxruntime what the run does around
PyTorch: the same preparation of each scan, the maps masked to the brain, the median across
slices, slice scores and thresholds.
So ``fae predict --onnx`` writes what ``fae predict --run --precision fp32`` writes, and this
module, like the whole prediction path, imports no torch unless it exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fae import __version__
from fae.calibration import display_range, thresholds_at
from fae.config import BATCH_SIZE
from fae.data.preprocess import PrepConfig
from fae.errors import FaeInputError
from fae.evaluation import slice_scores
from fae.io import atomic_path
from fae.postprocess import finish_maps, smooth_inside

METADATA = "fae.run"  # the metadata key of the run's record
FORMAT = 1  # of that record
OPSET = 18
CHECK_SLICES = 4  # random slices an export is checked on against PyTorch


def export_onnx(run: Path, out: Path) -> float:
    """Write ``run``'s slice → map network to ``out`` (ONNX, fp32, dynamic batch) with the run's
    record in its metadata; returns the largest absolute difference between the file's maps and
    PyTorch's fp32 maps on a few random slices (the export's own check)."""
    import onnx
    import torch

    from fae.methods.base import load_method

    est = load_method(run, device="cpu", progress=False)
    if est.export_problem:
        raise FaeInputError(run, f"cannot export {est.name}: {est.export_problem}")
    if not getattr(est, "calibration_", None):
        raise FaeInputError(run, "the run has no calibrated thresholds: run fae calibrate first")
    module, outputs = est.export_module()
    size = est.prep.size
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    try:
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["slices"],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    except Exception as err:  # the exporter's errors have no common type
        problem = " ".join(str(err).split())[:200]
        raise FaeInputError(run, f"cannot export {est.name} to ONNX ({problem})") from None
    record = {
        "format": FORMAT,
        "fae": __version__,
        **est.describe(),
        "step": est.step_,
        "calibration": est.calibration_,
    }
    model = program.model_proto
    onnx.helper.set_model_props(
        model,
        {
            METADATA: json.dumps(record),
            "fae.method": est.name,
            "fae.modality": str(est.meta.get("modality", "")),
            "fae.input": f"(N, 1, {size}, {size}) prepared slices in [0, 1], float32",
        },
    )
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    slices = torch.rand(CHECK_SLICES, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(slices)
    expected = expected if isinstance(expected, tuple) else (expected,)
    exported = ExportedModel(out)
    got = [exported._run(slices.numpy(), name) for name in outputs]
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))


class ExportedModel:
    """An exported run, on onnxruntime: everything :func:`fae.predict.predict_scans` asks of a
    run (preparation settings, meta, maps, slice scores, thresholds, colour scale)."""

    device = "cpu"  # for HD-BET, where a scan needs it (and PyTorch is installed)

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise FaeInputError(
                path, "onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        if not Path(path).is_file():
            raise FaeInputError(path, "file not found")
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's load errors have no common public type
            problem = " ".join(str(err).split())[:200]
            raise FaeInputError(path, f"not a readable ONNX model ({problem})") from None
        props = session.get_modelmeta().custom_metadata_map
        if METADATA not in props:
            raise FaeInputError(path, "not a model written by fae export (no fae.run metadata)")
        record = json.loads(props[METADATA])
        if record.get("format") != FORMAT:
            raise FaeInputError(
                path, f"export format {record.get('format')}; this fae reads format {FORMAT}"
            )
        self.name: str = record["method"]
        self.config: dict = record["config"]
        self.prep = PrepConfig.from_dict(record["prep"])
        self.meta: dict = record["meta"]
        self.calibration_: dict = record["calibration"]
        self.step_: int = record["step"]
        self.progress = True
        self._session = session
        self._input = session.get_inputs()[0].name

    def network(self, slices: np.ndarray) -> np.ndarray:
        """(N, 1, S, S) float32 slices → (N, 1, S, S) maps: the exported network alone."""
        return self._run(slices, "maps")

    def weights(self, slices: np.ndarray) -> np.ndarray:
        """(N, 1, S, S) float32 slices → (N, 1, S, S) weights of the centred maps (FAE's
        ``dark_weight``; only in an export that has them)."""
        return self._run(slices, "weights")

    def _run(self, slices: np.ndarray, output: str) -> np.ndarray:
        feed = {self._input: np.ascontiguousarray(slices, np.float32)}
        return self._session.run([output], feed)[0]

    def predict(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        batch_size: int = BATCH_SIZE,
        volume: np.ndarray | None = None,
        slice_index: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, S, S) slices in [0, 1] → (N, S, S) maps, 0 outside ``masks``, centred per volume
        and median-filtered across slices (of the same ``volume``, by ``slice_index``) as the
        run's own :meth:`~fae.methods.base.AnomalyMethod.predict`."""
        maps = self._batched(images, masks, self.network, batch_size)
        weight = None
        if self.config.get("dark_weight"):  # absent in exports made before it
            smooth = smooth_inside(images, masks, self.config.get("dark_smooth", 0.0))
            weight = self._batched(smooth, masks, self.weights, batch_size)
        center = self.config.get("volume_center", 0.0)  # absent in exports made before it
        median = self.config["slice_median"]
        return finish_maps(maps, masks, center, median, volume, slice_index, weight)

    @staticmethod
    def _batched(images: np.ndarray, masks: np.ndarray, fn, batch_size: int) -> np.ndarray:
        """``fn`` ((N, 1, S, S) → (N, 1, S, S)) over (N, S, S) slices in batches; 0 outside
        ``masks``."""
        out = np.zeros(images.shape, np.float32)
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            out[part] = fn(images[part, None])[:, 0]
        return np.where(masks, out, 0.0).astype(np.float32)

    def thresholds(self, fpr: float = 0.05) -> tuple[float, float]:
        """The run's calibrated (pixel, slice) thresholds at false-positive rate ``fpr``."""
        return thresholds_at(self.calibration_, fpr)

    def display_range(self, fpr: float = 0.05) -> tuple[float, float]:
        """The run's colour scale for map pictures."""
        return display_range(self.calibration_, fpr)

    def slice_scores(self, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Slice scores with the run's ``slice_score``."""
        return slice_scores(maps, masks, self.config["slice_score"])
