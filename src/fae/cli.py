"""The ``fae`` command line: a thin layer over the library that turns bad input into one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fae import __version__
from fae.errors import FaeInputError
from fae.methods.registry import METHODS

# fae.data.brainmask.MASK_SOURCES, spelt out so that `fae --help` imports no numerical library
BRAIN_MASK_CHOICES = ["auto", "given", "hd-bet", "otsu", "nonzero"]
PRECISION_CHOICES = ["auto", "fp32", "bf16"]  # fae.runtime.PRECISIONS, without importing torch


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fae`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except FaeInputError as err:
        print(f"fae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fae: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fae",
        description="Unsupervised anomaly localisation in brain MRI (Feature Autoencoders).",
    )
    parser.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="find, inspect and prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("inspect", help="say what a dataset folder or datalist holds")
    p.add_argument("path", type=Path)
    _add_channels(p)
    p.add_argument("--summary", action="store_true", help="omit the per-scan table")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the per-scan rows as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = data_sub.add_parser("prepare", help="prepare (and cache) 128x128 slices as the paper does")
    p.add_argument("path", type=Path)
    _add_prep_options(p)
    p.add_argument("--device", default="auto", help="for HD-BET: auto, cpu, cuda, cuda:1 ...")
    p.set_defaults(func=_cmd_prepare)

    p = data_sub.add_parser(
        "skullstrip", help="brain masks with HD-BET (offline), written beside a datalist"
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="NIfTI, folder, datalist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--modality", default="", help="which image of each subject (default: the only)")
    _add_channels(p)
    p.add_argument(
        "--mode",
        choices=["fast", "accurate"],
        default="fast",
        help="HD-BET with one network (fast, default) or all five (accurate, 5x the time)",
    )
    p.add_argument("--tta", action="store_true", help="also average 7 mirrored copies (8x time)")
    p.add_argument(
        "--spacing",
        metavar="X,Y,Z",
        help="voxel size in mm along the array axes, used instead of the header's for every "
        "scan (for scans whose header has none, or a wrong one)",
    )
    p.add_argument("--stripped", action="store_true", help="also write the skull-stripped image")
    p.add_argument(
        "--force", action="store_true", help="strip scans that are already skull-stripped too"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--cache-dir", type=Path, help="mask cache (default: $FAE_CACHE_DIR or ~/.cache/fae)"
    )
    p.add_argument("--no-cache", action="store_true", help="strip again and do not write a cache")
    p.set_defaults(func=_cmd_skullstrip)

    p = sub.add_parser("make-synthetic", help="write synthetic brains with known anomalies")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modalities", default="t1,t2,flair", help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=1, help="processes (same files for any number)")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("train", help="train a Feature-Autoencoder on healthy slices")
    p.add_argument("--data", type=Path, help="dataset folder or datalist")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run")
    p.add_argument(
        "--method",
        default="fae",
        choices=list(METHODS),
        help="what to train (default: %(default)s); other settings via --config",
    )
    p.add_argument("--config", type=Path, help="TOML/YAML/JSON file of settings; flags override it")
    p.add_argument("--modality", help="which image of each subject (default: the only one)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--backbone", choices=["resnet18", "efficientnet-lite0"])
    p.add_argument("--layers", help="comma-separated extractor layers (default: the paper's)")
    p.add_argument("--weights", type=Path, metavar="FILE", help="extractor weights (a state dict)")
    p.add_argument(
        "--no-pretrained", action="store_true", help="random extractor weights (ablation)"
    )
    p.add_argument(
        "--batchnorm",
        choices=["train", "frozen"],
        help="extractor BatchNorm while training: 'train' as the paper's code (default), "
        "'frozen' to compute features once (faster)",
    )
    p.add_argument("--slice-score", choices=["top10", "max"])
    p.add_argument(
        "--standardize-features",
        action="store_true",
        default=None,
        help="z-score feature channels before the autoencoder (not in the paper; learns faster)",
    )
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="arithmetic of training and maps (default: auto = bf16 where the CPU or GPU has "
        "it natively, for FAE; fp32 otherwise)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.5,
        help="share of subjects held out for testing (without a datalist split)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument(
        "--all-train-slices", action="store_true", help="also train on slices with lesions"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    _add_prep_options(p, modality=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics, per-subject table and figure of a trained run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--subjects", choices=["auto", "test", "all"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--no-cache", action="store_true")
    _add_brain_mask_override(p)
    _add_precision_override(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "predict", help="anomaly maps of new scans, in each scan's own space, with thresholds"
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="NIfTI, folder, datalist")
    p.add_argument("--run", type=Path, required=True, help="run folder or checkpoint file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--fpr",
        type=float,
        default=0.05,
        help="calibrated false-positive rate on healthy data that sets the thresholds "
        "(default: %(default)s; calibrated: 0.001, 0.01, 0.05)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="slices per batch, across scans")
    p.add_argument("--device", default="auto")
    _add_channels(p)
    p.add_argument(
        "--cache-dir", type=Path, help="brain-mask cache (default: $FAE_CACHE_DIR or ~/.cache/fae)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    _add_brain_mask_override(p)
    _add_precision_override(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("calibrate", help="recompute a run's thresholds on your healthy scans")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="healthy scans: folder or datalist")
    p.add_argument(
        "--subjects",
        choices=["all", "val"],
        default="all",
        help="all subjects of --data (default), or the run's own validation subjects",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--no-cache", action="store_true")
    _add_brain_mask_override(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "benchmark", help="train and evaluate several methods over several seeds, compare them"
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder or datalist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated (default: all: %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--steps", type=int, help="training steps of every learned method")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML/YAML/JSON with one table of settings per method, e.g. [fae] backbone = ...",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="every method's precision (default: auto, bf16 only for FAE where the hardware "
        "has it; a [method] table may set its own)",
    )
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    _add_prep_options(p, modality=False)
    p.add_argument("--modality", help="which image of each subject (default: the only one)")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("demo", help="synthetic brains → FAE training → maps → metrics, figures")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--subjects", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="training steps (default: 150)")
    p.add_argument("--standardize-features", action="store_true", help="see fae train")
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_channels(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--channels",
        help="names of the channels of 2D slice images, e.g. t1,flair,t1ce for the LGG TIFFs",
    )


def _add_brain_mask_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--brain-mask",
        choices=BRAIN_MASK_CHOICES,
        help="where brain masks come from (default: what the run was trained with), e.g. "
        "hd-bet for scans without the mask files of a 'given' run",
    )


def _add_precision_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="arithmetic of the maps (default: the run's; its thresholds were calibrated in it)",
    )


def _add_prep_options(p: argparse.ArgumentParser, modality: bool = True) -> None:
    _add_channels(p)
    if modality:
        p.add_argument("--modality", required=True, help="which image of each subject, e.g. flair")
    p.add_argument("--size", type=int, default=128, help="slice side length (default: 128)")
    p.add_argument(
        "--slices",
        default="brain",
        help="'brain' (slices containing brain, default) or START:STOP axial indices",
    )
    p.add_argument("--normalize", choices=["equalize", "minmax"], default="equalize")
    p.add_argument("--square", choices=["crop", "pad"], default="crop")
    p.add_argument(
        "--brain-mask",
        choices=BRAIN_MASK_CHOICES,
        default="auto",
        help="where brain masks come from: auto (default: the given mask, else the non-zero "
        "voxels of skull-stripped scans, else HD-BET), given, hd-bet, otsu, nonzero",
    )
    p.add_argument("--hd-bet-mode", choices=["fast", "accurate"], default="fast")
    p.add_argument("--hd-bet-tta", action="store_true", help="HD-BET with mirrored copies too")
    p.add_argument(
        "--cache-dir", type=Path, help="slice cache (default: $FAE_CACHE_DIR or ~/.cache/fae)"
    )
    p.add_argument("--no-cache", action="store_true", help="prepare again and do not write a cache")


def prep_config_from_args(args: argparse.Namespace):
    """The :class:`~fae.data.preprocess.PrepConfig` described by the command-line options."""
    from fae.data.preprocess import PrepConfig

    slices: str | tuple[int, int] = "brain"
    if args.slices != "brain":
        try:
            start, stop = (int(v) for v in args.slices.split(":"))
        except ValueError:
            raise FaeInputError(
                None, f"--slices must be 'brain' or START:STOP, got {args.slices!r}"
            ) from None
        slices = (start, stop)
    return PrepConfig(
        size=args.size,
        slices=slices,
        square=args.square,
        normalize=args.normalize,
        brain_mask=args.brain_mask,
        hd_bet_mode=args.hd_bet_mode,
        hd_bet_tta=args.hd_bet_tta,
    )


def cache_dir_from_args(args: argparse.Namespace) -> Path | None:
    from fae.data.cache import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def _channels(args: argparse.Namespace) -> list[str] | None:
    return [c.strip() for c in args.channels.split(",")] if args.channels else None


def _cmd_inspect(args: argparse.Namespace) -> int:
    from fae.data.discover import discover
    from fae.data.inspect import format_report, inspect_dataset
    from fae.io import atomic_path

    dataset = discover(args.path, _channels(args))
    rows = inspect_dataset(dataset)
    print(format_report(dataset, rows, per_subject=not args.summary))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from collections import Counter

    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset

    dataset = discover(args.path, _channels(args))
    config = prep_config_from_args(args)
    cache_dir = cache_dir_from_args(args)
    slices = prepare_dataset(dataset, args.modality, config, cache_dir, device=args.device)
    n_lesion = int(slices.slice_labels.sum())
    methods = Counter(slices.mask_methods)
    print(
        f"{len(slices.subject_ids)} subjects, {len(slices)} slices of {config.size}x{config.size} "
        f"({n_lesion} with lesion, {len(slices) - n_lesion} lesion-free); brain masks: "
        + ", ".join(f"{method} {count}" for method, count in sorted(methods.items()))
    )
    if cache_dir is not None:
        print(f"cached in {cache_dir / ('prep-' + config.key())}")
    return 0


def _cmd_skullstrip(args: argparse.Namespace) -> int:
    from fae.data.brainmask import parse_spacing
    from fae.data.discover import collect_scans
    from fae.data.skullstrip import skullstrip_scans

    spacing = parse_spacing(args.spacing) if args.spacing else None
    scans, failures = collect_scans(args.inputs, args.modality.lower(), _channels(args))
    for source, problem in failures:
        print(f"fae: error: {source}: {problem} (skipped)", file=sys.stderr)
    rows, failures = skullstrip_scans(
        scans,
        args.out,
        args.mode,
        args.tta,
        spacing,
        args.device,
        args.stripped,
        args.force,
        cache_dir_from_args(args),
        failures=failures,
    )
    print(f"wrote {len(rows)} brain masks to {args.out} (see brainmasks.csv, datalist.csv)")
    if failures:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
        return 1
    return 0


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from fae.data.synthetic import make_synthetic

    if args.subjects < 1:
        raise FaeInputError(None, f"--subjects must be at least 1, got {args.subjects}")
    modalities = [m.strip().lower() for m in args.modalities.split(",") if m.strip()]
    out = make_synthetic(
        args.out,
        args.subjects,
        seed=args.seed,
        modalities=modalities,
        test_fraction=args.test_fraction,
        workers=args.workers,
    )
    print(f"wrote {args.subjects} subjects to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fae.demo import run_demo

    try:
        run_demo(args.out, args.subjects, args.seed, args.steps, args.standardize_features)
    except KeyboardInterrupt:
        print("fae: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _model_params(args: argparse.Namespace) -> dict:
    """Settings from --config, overridden by the flags given on the command line."""
    from fae.config import read_config_file

    params = read_config_file(args.config) if args.config else {}
    flags = {
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "backbone": args.backbone,
        "layers": args.layers.split(",") if args.layers else None,
        "train_batchnorm": None if args.batchnorm is None else args.batchnorm == "train",
        "slice_score": args.slice_score,
        "standardize_features": args.standardize_features or None,
        "checkpoint_every": args.checkpoint_every,
        "precision": args.precision,
    }
    params.update({k: v for k, v in flags.items() if v is not None})
    if args.weights and args.no_pretrained:
        raise FaeInputError(None, "--weights and --no-pretrained exclude each other")
    if args.weights:
        params["weights"] = str(args.weights)
    if args.no_pretrained:
        params["weights"] = None
    return params


def _cmd_train(args: argparse.Namespace) -> int:
    from fae.workflow import resume_run, train_run

    run = args.resume or args.out
    if run is None or (args.resume is None and args.data is None):
        raise FaeInputError(None, "fae train needs --data and --out (or --resume RUN)")
    try:
        if args.resume:
            estimator = resume_run(args.resume, cache_dir_from_args(args), device=args.device)
        else:
            modality = args.modality or _only_modality(args.data, _channels(args))
            estimator = train_run(
                args.data,
                args.out,
                modality,
                _model_params(args),
                prep_config_from_args(args),
                _channels(args),
                args.test_fraction,
                args.val_fraction,
                args.split_seed,
                not args.all_train_slices,
                cache_dir_from_args(args),
                args.device,
                method=args.method,
            )
    except KeyboardInterrupt:
        print(f"fae: interrupted; continue with: fae train --resume {run}", file=sys.stderr)
        return 130
    print(f"run {run}: trained {estimator.step_} steps; checkpoint {run / 'checkpoint.pt'}")
    return 0


def _only_modality(data: Path, channels: list[str] | None) -> str:
    from fae.data.discover import discover

    modalities = discover(data, channels).modalities
    if len(modalities) != 1:
        raise FaeInputError(
            data, f"several modalities ({', '.join(modalities)}): choose one with --modality"
        )
    return modalities[0]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fae.workflow import evaluate_run

    summary = evaluate_run(
        args.run,
        args.data,
        args.out,
        args.subjects,
        cache_dir_from_args(args),
        args.device,
        brain_mask=args.brain_mask,
        precision=args.precision,
    )
    for key in ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc", "slice_ap"):
        print(f"{key:<12} {summary[key]:.4f}")
    print(f"{summary['n_subjects']} subjects, {summary['n_slices']} slices; wrote {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fae.data.discover import collect_scans
    from fae.methods.base import load_method
    from fae.predict import predict_scans

    estimator = load_method(args.run, device=args.device, precision=args.precision)
    channels = _channels(args) or estimator.meta.get("channels")
    scans, failures = collect_scans(args.inputs, estimator.meta.get("modality", ""), channels)
    for source, problem in failures:
        print(f"fae: error: {source}: {problem} (skipped)", file=sys.stderr)
    rows, failures = predict_scans(
        estimator,
        scans,
        args.out,
        args.fpr,
        args.batch_size,
        failures=failures,
        cache_dir=cache_dir_from_args(args),
        brain_mask_source=args.brain_mask,
    )
    print(f"wrote {len(rows)} scans to {args.out} (scores in {args.out / 'scores.csv'})")
    if failures:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
        return 1
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from fae.workflow import calibrate_run

    calibration = calibrate_run(
        args.run,
        args.data,
        cache_dir_from_args(args),
        args.device,
        subjects=args.subjects,
        brain_mask=args.brain_mask,
    )
    print(f"calibrated on {calibration['n_slices']} healthy slices of {args.data}")
    for fpr, t in calibration["pixel"].items():
        print(
            f"FPR {fpr:<6} pixel threshold {t:.4f}  slice threshold {calibration['slice'][fpr]:.4f}"
        )
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from fae.benchmark import format_markdown, run_benchmark
    from fae.config import read_config_file

    overrides = read_config_file(args.config) if args.config else {}
    loose = [k for k, v in overrides.items() if not isinstance(v, dict)]
    if loose:
        raise FaeInputError(
            args.config, f"settings must sit in per-method tables, not at the top: {loose[0]}"
        )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.precision is not None:  # the flag overrides the config file
        overrides = {m: {**overrides.get(m, {}), "precision": args.precision} for m in methods}
    modality = args.modality or _only_modality(args.data, _channels(args))
    split = {
        "test_fraction": args.test_fraction,
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed,
    }
    try:
        summary = run_benchmark(
            args.data,
            args.out,
            methods,
            args.seeds,
            modality,
            args.steps,
            overrides,
            prep_config_from_args(args),
            split,
            cache_dir_from_args(args),
            args.device,
            channels=_channels(args),
        )
    except KeyboardInterrupt:
        print("fae: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(format_markdown(summary))
    print(f"wrote {args.out / 'results.md'}, bars.png and pr_curves.png")
    return 0
