"""Options several sub-commands share, and turning them into library objects.

Nothing here imports a numerical library, so that ``fae --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fae.errors import FaeInputError

# fae.data.brainmask.MASK_SOURCES and fae.config.PRECISIONS, spelt out (tests check they match)
BRAIN_MASK_CHOICES = ["auto", "given", "hd-bet", "otsu", "nonzero"]
PRECISION_CHOICES = ["auto", "fp32", "bf16"]


def add_channels(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--channels",
        help="names of the channels of 2D slice images, e.g. t1,flair,t1ce for the LGG TIFFs",
    )


def add_cache(p: argparse.ArgumentParser, what: str = "slice") -> None:
    p.add_argument(
        "--cache-dir", type=Path, help=f"{what} cache (default: $FAE_CACHE_DIR or ~/.cache/fae)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def add_brain_mask_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--brain-mask",
        choices=BRAIN_MASK_CHOICES,
        help="where brain masks come from (default: what the run was trained with), e.g. "
        "hd-bet for scans without the mask files of a 'given' run",
    )


def add_training_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of a command that trains (fae train, fae demo); None leaves auto."""
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="arithmetic of training and maps (default: auto = bf16 where the CPU or GPU has "
        "it natively, for FAE; fp32 otherwise)",
    )


def add_precision_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="arithmetic of the maps (default: the run's; its thresholds were calibrated in it)",
    )


def add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--test-fraction",
        type=float,
        help="share of subjects held out for testing, without a datalist split (default: 0.5; "
        "0 when fine-tuning with --init)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument(
        "--select-fraction",
        type=float,
        default=0.0,
        help="share of subjects with lesions kept apart for choosing settings (default: 0)",
    )
    p.add_argument("--split-seed", type=int, default=0)


def add_prep_options(p: argparse.ArgumentParser, modality_required: bool = False) -> None:
    """How slices are prepared (stored in a run), the dataset's channels and the cache."""
    add_channels(p)
    p.add_argument(
        "--modality",
        required=modality_required,
        help="which image of each subject, e.g. flair"
        + ("" if modality_required else " (default: the only one)"),
    )
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
    add_cache(p)


def prep_config(args: argparse.Namespace):
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


def cache_dir(args: argparse.Namespace) -> Path | None:
    from fae.data.cache import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def channels(args: argparse.Namespace) -> list[str] | None:
    return [c.strip() for c in args.channels.split(",")] if args.channels else None


def split(args: argparse.Namespace, test_fraction: float = 0.5) -> dict:
    """The subject-split fields of :class:`fae.workflow.RunSpec` (``test_fraction``: the
    default when the flag is not given)."""
    return {
        "test_fraction": test_fraction if args.test_fraction is None else args.test_fraction,
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed,
        "select_fraction": args.select_fraction,
    }
