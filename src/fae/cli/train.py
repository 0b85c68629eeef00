"""``fae train``: train a run, or continue it (``--resume RUN``), or train it longer
(``--resume RUN --steps N``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fae.cli import options
from fae.config import SLICE_SCORES
from fae.errors import FaeInputError
from fae.methods.registry import METHODS, PROPOSED


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Feature-Autoencoder (or another method)")
    p.add_argument("--data", type=Path, help="dataset folder or datalist")
    p.add_argument("--out", type=Path, help="run folder (the same command again continues it)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run, or with --steps N train a finished one longer",
    )
    p.add_argument(
        "--init",
        type=Path,
        metavar="RUN",
        help="fine-tune: start from this run's weights and settings (flags override them) on "
        "--data, e.g. a new site's healthy scans, with every subject for training and "
        "calibration unless --test-fraction is given",
    )
    p.add_argument(
        "--method",
        default=PROPOSED,
        choices=list(METHODS),
        help="what to train (default: %(default)s); other settings via --config",
    )
    p.add_argument(
        "--preset",
        help="named settings of the method: for fae 'paper' (the publication) or 'best' "
        "(chosen on LGG selection patients, per modality); --config and flags override it",
    )
    p.add_argument("--config", type=Path, help="TOML/YAML/JSON file of settings; flags override it")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--backbone",
        choices=["resnet18", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"],
    )
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
    p.add_argument(
        "--slice-score",
        choices=list(SLICE_SCORES),
        help="a slice's score: the mean of its top 10 %% (the paper) or 25 %% of map values "
        "in the brain, or the maximum",
    )
    p.add_argument(
        "--volume-center",
        type=float,
        metavar="Q",
        help="subtract the Q quantile (0..1) of each scan's own map inside its brain (not in "
        "the paper; default 0: off)",
    )
    p.add_argument(
        "--slice-median",
        type=int,
        metavar="K",
        help="median of each map over K neighbouring slices of its volume, odd (not in the "
        "paper; default 1: off)",
    )
    p.add_argument(
        "--standardize-features",
        action="store_true",
        default=None,
        help="z-score feature channels before the autoencoder (not in the paper; learns faster)",
    )
    p.add_argument(
        "--fusion",
        choices=["none", "intensity"],
        help="map the intensity evidence weighted by how unusual FAE's structure is, both read "
        "against healthy slices (not in the paper; default: none)",
    )
    p.add_argument(
        "--dark-weight",
        action=argparse.BooleanOptionalAction,
        help="weight each scan's centred map by how much darker than healthy tissue each pixel "
        "is: P_healthy(brighter), 0.5 to 1 (not in the paper; for T1, where LGG tumours are mostly "
        "not brighter than their surroundings)",
    )
    p.add_argument(
        "--dark-smooth",
        type=float,
        metavar="PIXELS",
        help="with --dark-weight: read the darkness off the slice smoothed inside the brain by a "
        "Gaussian of this many pixels (not in the paper; 0: off, the default)",
    )
    p.add_argument("--checkpoint-every", type=int)
    options.add_training_precision(p)
    options.add_split(p)
    p.add_argument(
        "--train-slices",
        choices=["lesion-free", "all", "masked"],
        help="slices of the training patients to learn from: lesion-free (the paper, default), "
        "all, or masked (all, with each lesion grown by --lesion-margin pixels left out of "
        "the loss)",
    )
    p.add_argument("--lesion-margin", type=int, help="pixels (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    options.add_prep_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fae import distributed
    from fae.workflow import RunSpec, train_or_resume

    distributed.init_from_env(args.device)  # under torchrun: join the other processes
    main = distributed.is_main()
    if args.resume is not None:
        folder = args.resume
        spec = RunSpec.of_run(folder, args.device)
        if args.steps is not None:
            spec = replace(spec, params={**spec.params, "steps": args.steps})
    elif args.data is None or args.out is None:
        raise FaeInputError(None, "fae train needs --data and --out (or --resume RUN)")
    elif args.init is not None:
        folder = args.out
        spec = _fine_tuning(args)
    else:
        folder = args.out
        modality = args.modality
        if args.preset is not None and modality is None:  # presets may differ per modality
            from fae.data.discover import discover

            modality = discover(args.data, options.channels(args)).pick_modality(None)
        spec = RunSpec(
            args.data,
            modality,
            args.method,
            model_params(args, modality),
            options.prep_config(args),
            options.channels(args),
            **options.split(args),
            device=args.device,
        )
    try:
        with distributed.leaving():
            estimator = train_or_resume(spec, folder, options.cache_dir(args), announce=print)
    except KeyboardInterrupt:
        if main:
            print(f"fae: interrupted; continue with: fae train --resume {folder}", file=sys.stderr)
        return 130
    if main:
        print(
            f"run {folder}: trained {estimator.step_} steps; checkpoint {folder / 'checkpoint.pt'}"
        )
    return 0


def _fine_tuning(args: argparse.Namespace):
    """The spec of a run that starts from ``--init``'s weights: its method, settings and
    preprocessing, with the flags given on top, on ``--data``."""
    from fae.data.discover import discover
    from fae.methods.base import load_method
    from fae.workflow import RunSpec

    if args.preset is not None:
        raise FaeInputError(None, "--preset and --init exclude each other")
    source = load_method(args.init, progress=False)
    channels = options.channels(args) or source.meta.get("channels")
    wanted = args.modality or source.meta.get("modality")
    modality = discover(args.data, channels).pick_modality(wanted, strict=bool(args.modality))
    return RunSpec(
        args.data,
        modality,
        source.name,
        {**source.config.to_dict(), **model_params(args, modality)},
        source.prep,
        channels,
        **options.split(args, test_fraction=0.0),
        init=args.init,
        device=args.device,
    )


def model_params(args: argparse.Namespace, modality: str | None = None) -> dict:
    """Settings of the --preset, overridden by --config, overridden by the flags given."""
    from fae.config import read_config_file

    params = {}
    if args.preset is not None:
        from fae.methods.registry import method_class

        params = method_class(args.method).preset(args.preset, modality)
    params.update(read_config_file(args.config) if args.config else {})
    flags = {
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "backbone": args.backbone,
        "layers": args.layers.split(",") if args.layers else None,
        "train_batchnorm": None if args.batchnorm is None else args.batchnorm == "train",
        "slice_score": args.slice_score,
        "volume_center": args.volume_center,
        "slice_median": args.slice_median,
        "standardize_features": args.standardize_features or None,
        "checkpoint_every": args.checkpoint_every,
        "fusion": args.fusion,
        "dark_weight": args.dark_weight,
        "dark_smooth": args.dark_smooth,
        "train_slices": args.train_slices,
        "lesion_margin": args.lesion_margin,
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
