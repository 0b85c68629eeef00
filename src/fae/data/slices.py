"""A dataset's prepared slices as arrays, split by subject (never by slice)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fae.data.cache import cache_path, load_cached, save_cached
from fae.data.discover import Dataset, Subject
from fae.data.preprocess import PreparedVolume, PrepConfig, prepare_volume
from fae.data.volume import Volume


@dataclass(frozen=True)
class SliceSet:
    """Prepared slices of several subjects, stacked.

    images: (N, S, S) float32 in [0, 1]; segs, masks: (N, S, S) bool;
    subject: (N,) index into ``subject_ids``; slice_index: (N,) axial index in the RAS volume.
    intensity: (n_subjects, 2) raw (1st, 99th) intensity percentiles of each subject's scan
    inside its brain mask (``None`` where unknown), the reference for prediction's warnings;
    mask_methods: how each subject's brain mask was obtained (``"hd-bet"``, ``"given"``...).
    """

    images: np.ndarray
    segs: np.ndarray
    masks: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    subject_ids: tuple[str, ...]
    intensity: np.ndarray | None = None
    mask_methods: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def slice_labels(self) -> np.ndarray:
        """(N,) bool: the slice contains lesion pixels."""
        return self.segs.any(axis=(1, 2))

    def take(self, keep: np.ndarray) -> SliceSet:
        """The slices where the boolean ``keep`` is True (subjects list unchanged)."""
        return SliceSet(
            self.images[keep],
            self.segs[keep],
            self.masks[keep],
            self.subject[keep],
            self.slice_index[keep],
            self.subject_ids,
            self.intensity,
            self.mask_methods,
        )

    def lesion_free(self) -> SliceSet:
        """Only slices without lesion pixels: healthy training data from patients."""
        return self.take(~self.slice_labels)

    def subjects(self, ids: Sequence[str]) -> SliceSet:
        """Only the slices of the subjects in ``ids``."""
        wanted = [i for i, s in enumerate(self.subject_ids) if s in set(ids)]
        return self.take(np.isin(self.subject, wanted))

    def per_subject(self) -> list[tuple[str, SliceSet]]:
        """(subject id, its slices) for each subject that has slices."""
        return [
            (sid, self.take(self.subject == i))
            for i, sid in enumerate(self.subject_ids)
            if np.any(self.subject == i)
        ]


def load_subject(
    subject: Subject,
    modality: str,
    config: PrepConfig,
    cache_dir: Path | None = None,
    device: str = "auto",
) -> PreparedVolume:
    """Prepared slices of one subject, from the cache when possible (HD-BET, where the brain
    mask needs it, runs on ``device``)."""
    path = cache_path(cache_dir, subject, modality, config) if cache_dir else None
    if path is not None and (cached := load_cached(path)) is not None:
        return cached
    image = subject.images[modality].load()
    seg = _load_optional(subject.seg)
    brainmask = _load_optional(subject.brainmask)
    prepared = prepare_volume(image, seg, brainmask, config, cache_dir, device)
    if path is not None:
        save_cached(path, prepared)
    return prepared


def prepare_dataset(
    dataset: Dataset,
    modality: str,
    config: PrepConfig = PrepConfig(),
    cache_dir: Path | None = None,
    subject_ids: Sequence[str] | None = None,
    progress: bool = True,
    device: str = "auto",
) -> SliceSet:
    """Prepare (or load from cache) the slices of every subject, or of ``subject_ids``."""
    modality = dataset.pick_modality(modality)
    subjects = [s for s in dataset.subjects if subject_ids is None or s.id in set(subject_ids)]
    volumes = [
        load_subject(s, modality, config, cache_dir, device)
        for s in tqdm(subjects, desc=f"preparing {modality}", unit="scan", disable=not progress)
    ]
    return stack_volumes([s.id for s in subjects], volumes, config.size)


def stack_volumes(ids: Sequence[str], volumes: Sequence[PreparedVolume], size: int) -> SliceSet:
    """Concatenate prepared volumes into one :class:`SliceSet`."""
    counts = [len(v.images) for v in volumes]

    def cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros((0, size, size), dtype)

    return SliceSet(
        images=cat([v.images for v in volumes], np.float32),
        segs=cat([v.segs for v in volumes], bool),
        masks=cat([v.masks for v in volumes], bool),
        subject=np.repeat(np.arange(len(volumes)), counts).astype(np.int32),
        slice_index=np.concatenate([v.slice_index for v in volumes])
        if volumes
        else np.zeros(0, np.int32),
        subject_ids=tuple(ids),
        intensity=np.array([v.intensity for v in volumes], np.float64).reshape(-1, 2),
        mask_methods=tuple(v.mask_method for v in volumes),
    )


def split_subjects(
    dataset: Dataset,
    test_fraction: float = 0.5,
    val_fraction: float = 0.1,
    seed: int = 0,
    select_fraction: float = 0.0,
) -> dict[str, list[str]]:
    """Split subject ids into ``train``/``val``/``select``/``test``, by subject, never by slice.

    ``train`` and ``val`` give the healthy slices a model learns from and is calibrated on;
    ``select`` are patients with lesions for choosing settings, kept apart from the ``test``
    patients that results are reported on. A datalist's own ``split`` column wins where given;
    other subjects are shuffled with ``seed`` and divided by the fractions: test, val, select,
    then train (at least one test subject when there are two or more), so that the test and
    val subjects do not depend on ``select_fraction`` and its 0 gives the two-way split.
    Without validation subjects, ``val_fraction`` of the training subjects (at least one) are
    held out: a run needs healthy validation slices for its loss and threshold calibration.
    """
    splits: dict[str, list[str]] = {"train": [], "val": [], "select": [], "test": []}
    free = []
    for s in dataset.subjects:
        (splits[s.split] if s.split else free).append(s.id)
    order = np.random.default_rng(seed).permutation(len(free))
    free = [free[i] for i in order]
    n_test = round(len(free) * test_fraction)
    if len(free) >= 2 and test_fraction > 0:
        n_test = max(n_test, 1)
    n_select = round(len(free) * select_fraction)
    n_val = round(len(free) * val_fraction)
    splits["test"] += free[:n_test]
    splits["val"] += free[n_test : n_test + n_val]
    splits["select"] += free[n_test + n_val : n_test + n_val + n_select]
    splits["train"] += free[n_test + n_val + n_select :]
    if not splits["val"] and val_fraction > 0 and len(splits["train"]) >= 2:
        n_val = max(1, round(len(splits["train"]) * val_fraction))
        splits["val"] = splits["train"][-n_val:]
        splits["train"] = splits["train"][:-n_val]
    return splits


def _load_optional(source) -> Volume | None:
    return source.load() if source is not None else None
