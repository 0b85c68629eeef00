"""Finding subjects, modalities, segmentations and brain masks in the layouts users have.

Four layouts are recognised (see :func:`discover`):

1. ``flat``: one folder of ``<subject>_<modality>.nii.gz`` with optional ``<subject>_seg`` and
   ``<subject>_brainmask`` files;
2. ``subject-folders``: one folder per subject (BraTS ``BraTS20_Training_001_flair.nii.gz``,
   Cam-CAN ``sub-XXX_T2w.nii.gz``, BRATS 2013 ``Flair_*.nii.gz`` + ``OTMultiClass.nii.gz``);
3. ``datalist``: a CSV with columns ``subject,image,seg,brainmask,split`` (``modality`` optional);
4. ``slice-folders``: 2D slices ``<case>_<n>.tif`` + ``<case>_<n>_mask.tif`` (the LGG layout),
   stacked into volumes by slice number, one modality per image channel.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from fae.data.volume import NiftiSource, SliceStackSource, Source
from fae.errors import FaeInputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
MODALITY_ALIASES = {
    "flair": "flair",
    "t1": "t1",
    "t1w": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "pd": "pd",
    "pdw": "pd",
    "dwi": "dwi",
    "adc": "adc",
}
SEG_TOKENS = {"seg", "segmentation", "label", "labels", "lesion", "lesions", "otmulticlass", "gt"}
SPLITS = ("train", "val", "select", "test")
KNOWN_MODALITIES = set(MODALITY_ALIASES.values())


@dataclass(frozen=True)
class Subject:
    """One subject: an image per modality, and optionally a lesion segmentation and brain mask."""

    id: str
    images: dict[str, Source]
    seg: Source | None = None
    brainmask: Source | None = None
    split: str | None = None


@dataclass(frozen=True)
class Dataset:
    """The subjects found under ``root`` and the layout they were found in."""

    root: Path
    layout: str
    subjects: tuple[Subject, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def modalities(self) -> list[str]:
        return sorted({m for s in self.subjects for m in s.images})

    def subject(self, subject_id: str) -> Subject:
        for s in self.subjects:
            if s.id == subject_id:
                return s
        raise KeyError(subject_id)

    def pick_modality(self, wanted: str | None = None, strict: bool = True) -> str:
        """The modality to use (:func:`pick_modality`), which every subject must have."""
        try:
            modality = pick_modality(self.modalities, wanted, strict)
        except FaeInputError as err:
            raise FaeInputError(self.root, err.problem) from None
        missing = [s.id for s in self.subjects if modality not in s.images]
        if missing:
            raise FaeInputError(
                self.root, f"'{modality}' missing for {len(missing)} subjects, e.g. {missing[0]}"
            )
        return modality


def pick_modality(
    available: Collection[str], wanted: str | None = None, strict: bool = False
) -> str:
    """Which of the ``available`` modalities to use: ``wanted`` when it is there, else the only
    one (unless ``strict``, where a missing ``wanted`` is an error); a one-line error otherwise."""
    names = ", ".join(sorted(available))
    if wanted in available:
        return wanted
    if wanted and (strict or len(available) != 1):
        raise FaeInputError(None, f"no '{wanted}' images (found: {names})")
    if len(available) != 1:
        raise FaeInputError(None, f"several modalities ({names}): choose one")
    return next(iter(available))


def discover(path: str | Path, channel_names: Sequence[str] | None = None) -> Dataset:
    """Find the dataset at ``path`` (a folder or a datalist CSV) and describe it.

    ``channel_names`` names the channels of multi-channel 2D slices (e.g. ``t1,flair,t1ce`` for
    the LGG TIFFs); by default they are called ``channel0``, ``channel1``...
    """
    path = Path(path)
    if not path.exists():
        raise FaeInputError(path, "not found")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FaeInputError(path, "expected a folder or a datalist .csv file")
        return _read_datalist(path)
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    niftis = [p for p in entries if p.is_file() and _is_nifti(p)]
    if niftis:
        return Dataset(path, "flat", _subjects_from_flat(niftis))
    folders = [p for p in entries if p.is_dir()]
    if any(_is_nifti(f) for d in folders for f in d.iterdir()):
        return Dataset(path, "subject-folders", _subjects_from_folders(folders))
    slice_dirs = [d for d in [path, *folders] if any(_slice_number(f) for f in d.iterdir())]
    if slice_dirs:
        return Dataset(path, "slice-folders", _subjects_from_slices(slice_dirs, channel_names))
    raise FaeInputError(
        path, "no images found (looked for *.nii.gz, subject folders, *_<n>.tif slices)"
    )


def file_role(path: Path) -> tuple[str, str | None]:
    """Classify an image file by its name: ``('seg'|'brainmask'|'image', modality or None)``."""
    tokens = _tokens(path)
    joined = "_".join(tokens)
    if "brainmask" in tokens or "brain_mask" in joined:
        return "brainmask", None
    if SEG_TOKENS & set(tokens) or "gold_standard" in joined or tokens[-1] == "mask":
        return "seg", None
    for token in tokens:
        if token in MODALITY_ALIASES:
            return "image", MODALITY_ALIASES[token]
    return "image", None


def _subjects_from_flat(files: list[Path]) -> tuple[Subject, ...]:
    grouped: dict[str, list[Path]] = {}
    for f in files:
        stem = _stem(f)
        subject = stem.rsplit("_", 1)[0] if "_" in stem else stem
        grouped.setdefault(subject, []).append(f)
    return tuple(_subject_from_files(sid, fs) for sid, fs in grouped.items())


def _subjects_from_folders(folders: list[Path]) -> tuple[Subject, ...]:
    subjects = []
    for d in folders:
        files = sorted(f for f in d.iterdir() if f.is_file() and _is_nifti(f))
        if files:
            subjects.append(_subject_from_files(d.name, files))
    return tuple(subjects)


def _subject_from_files(subject_id: str, files: list[Path]) -> Subject:
    images: dict[str, Source] = {}
    seg = brainmask = None
    for f in files:
        role, modality = file_role(f)
        if role == "image" and modality is None:
            modality = _tokens(f)[-1]
        if role == "seg":
            seg = _only_one(seg, f, "segmentation")
        elif role == "brainmask":
            brainmask = _only_one(brainmask, f, "brain mask")
        else:
            if modality in images:
                raise FaeInputError(f, f"second '{modality}' image for subject {subject_id}")
            images[modality] = NiftiSource(f)
    if not images:
        raise FaeInputError(files[0].parent, f"subject {subject_id} has no image, only masks")
    return Subject(subject_id, images, seg, brainmask)


def _only_one(current: Source | None, f: Path, what: str) -> Source:
    if current is not None:
        raise FaeInputError(f, f"second {what} beside {current}")
    return NiftiSource(f)


def _subjects_from_slices(
    folders: list[Path], channel_names: Sequence[str] | None
) -> tuple[Subject, ...]:
    cases: dict[str, dict[int, dict[str, Path]]] = {}
    for d in folders:
        for f in sorted(d.iterdir()):
            parsed = _slice_number(f)
            if parsed:
                case, number, is_mask = parsed
                cases.setdefault(case, {}).setdefault(number, {})[
                    "mask" if is_mask else "image"
                ] = f
    subjects = []
    for case, by_number in sorted(cases.items()):
        numbers = sorted(by_number)
        missing = [n for n in numbers if "image" not in by_number[n]]
        if missing:
            raise FaeInputError(by_number[missing[0]]["mask"], "mask without an image slice")
        images = tuple(by_number[n]["image"] for n in numbers)
        names = _channel_names(images[0], channel_names)
        sources: dict[str, Source] = {
            name: SliceStackSource(images, None if len(names) == 1 else i)
            for i, name in enumerate(names)
        }
        masks = [by_number[n].get("mask") for n in numbers]
        seg = None
        if any(masks):
            if not all(masks):
                raise FaeInputError(images[masks.index(None)], "slice has no _mask file")
            seg = SliceStackSource(tuple(masks), None)
        subjects.append(Subject(case, sources, seg))
    return tuple(subjects)


def _channel_names(first: Path, given: Sequence[str] | None) -> list[str]:
    try:
        with Image.open(first) as img:
            n = len(img.getbands())
    except OSError as err:
        raise FaeInputError(first, f"cannot read image ({err})") from None
    if given is not None:
        if len(given) != n:
            raise FaeInputError(first, f"has {n} channels but {len(given)} channel names given")
        return [MODALITY_ALIASES.get(g.lower(), g.lower()) for g in given]
    return ["image"] if n == 1 else [f"channel{i}" for i in range(n)]


def _read_datalist(path: Path) -> Dataset:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise FaeInputError(path, f"cannot read CSV ({err})") from None
    if not rows:
        raise FaeInputError(path, "datalist has no rows")
    missing = {"subject", "image"} - set(rows[0])
    if missing:
        raise FaeInputError(path, f"datalist lacks column(s) {', '.join(sorted(missing))}")
    subjects: dict[str, Subject] = {}
    for line, row in enumerate(rows, start=2):
        sid = (row.get("subject") or "").strip()
        image = (row.get("image") or "").strip()
        if not sid or not image:
            raise FaeInputError(path, f"line {line}: empty subject or image")
        image_path = _resolve(path, image)
        modality = (
            (row.get("modality") or "").strip().lower() or file_role(image_path)[1] or "image"
        )
        modality = MODALITY_ALIASES.get(modality, modality)
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise FaeInputError(path, f"line {line}: split '{split}' is not one of {SPLITS}")
        seg = _optional_source(path, row.get("seg"))
        brainmask = _optional_source(path, row.get("brainmask"))
        previous = subjects.get(sid)
        if previous is None:
            subjects[sid] = Subject(sid, {modality: NiftiSource(image_path)}, seg, brainmask, split)
            continue
        if modality in previous.images:
            raise FaeInputError(path, f"line {line}: second '{modality}' image for subject {sid}")
        if (seg, brainmask, split) != (previous.seg, previous.brainmask, previous.split):
            raise FaeInputError(path, f"line {line}: seg/brainmask/split differ for subject {sid}")
        previous.images[modality] = NiftiSource(image_path)
    return Dataset(path, "datalist", tuple(subjects.values()))


def _optional_source(datalist: Path, value: str | None) -> Source | None:
    value = (value or "").strip()
    return NiftiSource(_resolve(datalist, value)) if value else None


def _resolve(datalist: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (datalist.parent / p)


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (*NIFTI_SUFFIXES, *SLICE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _tokens(p: Path) -> list[str]:
    return [t for t in re.split(r"[_\-.]+", _stem(p).lower()) if t]


_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)(?P<mask>_mask)?$")


def _slice_number(p: Path) -> tuple[str, int, bool] | None:
    if not (p.is_file() and p.name.lower().endswith(SLICE_SUFFIXES)):
        return None
    m = _SLICE_RE.match(_stem(p))
    return (m["case"], int(m["n"]), bool(m["mask"])) if m else None


@dataclass(frozen=True)
class Scan:
    """One image to process on its own (``fae predict``, ``fae data skullstrip``): an output
    name, the image, and what its dataset says about it."""

    name: str
    image: Source
    brainmask: Source | None = None
    modality: str | None = None  # what the file name or the dataset calls the scan
    seg: Source | None = None
    split: str | None = None


def collect_scans(
    inputs: Sequence[Path], modality: str, channels: Sequence[str] | None = None
) -> tuple[list[Scan], list[tuple[str, str]]]:
    """NIfTI files, dataset folders and datalists → scans (each subject's ``modality`` image, or
    its only image when ``modality`` is empty or missing). Output names are the file's name
    without extension, or the subject id, made unique by the folders they come from
    (:func:`unique_names`).

    Returns the scans and ``(input, problem)`` for inputs that cannot be used.
    """
    scans: list[Scan] = []
    places: list[tuple[str, ...]] = []  # the folders each scan comes from, nearest first
    failures: list[tuple[str, str]] = []
    for path in map(Path, inputs):
        if not path.exists():
            failures.append((str(path), "no such file or folder"))
        elif path.is_file() and _is_nifti(path):
            scans.append(Scan(_stem(path), NiftiSource(path), modality=file_role(path)[1]))
            places.append(_folders(path.parent))
        else:
            try:
                dataset = discover(path, channels)
            except FaeInputError as err:
                failures.append((str(err.path or path), err.problem))
                continue
            for subject in dataset.subjects:
                images = subject.images
                try:
                    key = pick_modality(images, modality or None)
                except FaeInputError as err:
                    failures.append((f"{path}/{subject.id}", err.problem))
                    continue
                scans.append(
                    Scan(
                        subject.id, images[key], subject.brainmask, key, subject.seg, subject.split
                    )
                )
                places.append(_folders(path if path.is_dir() else path.parent))
    return unique_names(scans, places), failures


def unique_names(scans: list[Scan], places: Sequence[tuple[str, ...]] | None = None) -> list[Scan]:
    """Make output names unique. Scans that share a name are told apart by the folders they
    come from (``places``, nearest first), as few as it takes: ``patient19/FLAIR.nii.gz`` and
    ``patient26/FLAIR.nii.gz`` become ``patient19_FLAIR`` and ``patient26_FLAIR``,
    ``a/p1/FLAIR.nii.gz`` and ``b/p1/FLAIR.nii.gz`` ``a_p1_FLAIR`` and ``b_p1_FLAIR``; a name
    still repeated (the same file twice) gets ``_2``, ``_3``... appended."""
    names = [scan.name for scan in scans]
    places = list(places) if places is not None else [()] * len(scans)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for name, members in groups.items():
        distinct = {places[i] for i in members}
        if len(distinct) < 2:
            continue  # nothing to tell them apart by
        depth = dict.fromkeys(members, 1)  # the nearest folder first, more where it collides
        while True:
            label = {i: places[i][: depth[i]] for i in members}
            grow = [
                i
                for i in members
                if depth[i] < len(places[i])
                and any(label[j] == label[i] and places[j] != places[i] for j in members)
            ]
            if not grow:
                break
            for i in grow:
                depth[i] += 1
        for i in members:
            names[i] = "_".join([*reversed(label[i]), name])
    used: set[str] = set()
    unique = []
    for scan, base in zip(scans, names, strict=True):
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}_{count}"
        used.add(name)
        unique.append(replace(scan, name=name))
    return unique


def _folders(folder: Path) -> tuple[str, ...]:
    """The names of ``folder`` and the folders above it, nearest first."""
    return tuple(part for part in reversed(folder.resolve().parts) if part not in ("/", ""))
