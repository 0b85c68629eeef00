"""``fae predict``: anomaly maps of new scans, in each scan's own space, with thresholds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fae.cli import options
from fae.errors import FaeInputError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="anomaly maps of new scans, in each scan's own space, with thresholds"
    )
    p.add_argument("inputs", type=Path, nargs="*", metavar="INPUT", help="NIfTI, folder, datalist")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--run", type=Path, help="run folder or checkpoint file")
    model.add_argument(
        "--onnx",
        type=Path,
        help="a model written by `fae export` instead of a run: onnxruntime makes the maps, "
        "no PyTorch needed (brain masks then come with the scans, or --brain-mask nonzero/otsu)",
    )
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="predict only inputs K, K+N, K+2N... (1 <= K <= N) into --out, with scores-K.csv; "
        "N such workers share the scans, --merge joins them (under torchrun: the process's rank, "
        "and rank 0 merges)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        metavar="DIR",
        help="join the finished shards' scores-K.csv in DIR into DIR/scores.csv (nothing else)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=0.05,
        help="calibrated false-positive rate on healthy data that sets the thresholds "
        "(default: %(default)s; calibrated: 0.001, 0.01, 0.05)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="slices per batch, across scans (default: 64)"
    )
    p.add_argument("--device", default="auto")
    options.add_channels(p)
    options.add_cache(p, "brain-mask")
    options.add_brain_mask_override(p)
    options.add_precision_override(p)
    p.set_defaults(func=predict)


def predict(args: argparse.Namespace) -> int:
    from fae.data.discover import collect_scans
    from fae.predict import Shard, merge_shards, predict_scans

    if args.merge is not None:
        if args.inputs or args.run or args.onnx or args.shard:
            raise FaeInputError(None, "--merge DIR takes no inputs, --run, --onnx or --shard")
        return _merged(*merge_shards(args.merge), args.merge)
    if not args.inputs or args.out is None or (args.run is None and args.onnx is None):
        raise FaeInputError(None, "fae predict needs INPUT..., --run RUN (or --onnx) and --out")
    shard = Shard.parse(args.shard) if args.shard else Shard.from_torchrun()
    if shard is not None and args.shard is None:  # under torchrun: join the others, pin a GPU
        from fae import distributed

        distributed.init_from_env(args.device)
    if args.onnx is not None:
        from fae.exported import ExportedModel

        estimator = ExportedModel(args.onnx)
    else:
        from fae.methods.base import load_method

        estimator = load_method(args.run, device=args.device, precision=args.precision)
    channels = options.channels(args) or estimator.meta.get("channels")
    scans, failures = collect_scans(args.inputs, estimator.meta.get("modality", ""), channels)
    if shard is None or shard.index == 1:
        for source, problem in failures:
            print(f"fae: error: {source}: {problem} (skipped)", file=sys.stderr)
    rows, failures = predict_scans(
        estimator,
        scans,
        args.out,
        args.fpr,
        args.batch_size,
        failures=failures,
        cache_dir=options.cache_dir(args),
        brain_mask_source=args.brain_mask,
        shard=shard,
    )
    scores = args.out / (shard.scores if shard else "scores.csv")
    print(f"wrote {len(rows)} scans to {args.out} (scores in {scores})")
    if shard is not None and args.shard is None:  # torchrun: rank 0 merges when all are done
        return _torchrun_merge(args.out, failures)
    if failures:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
        return 1
    return 0


def _merged(rows: list[dict], failures: list, folder: Path, said: bool = False) -> int:
    """Say what was merged and which inputs failed (``said``: the shards already named them)."""
    print(f"merged {len(rows)} scans into {folder / 'scores.csv'}")
    for source, problem in [] if said else failures:
        print(f"fae: error: {source}: {problem} (failed in its shard)", file=sys.stderr)
    if failures and said:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
    return 1 if failures else 0


def _torchrun_merge(folder: Path, failures: list) -> int:
    """Under torchrun: wait for every rank, then rank 0 writes ``scores.csv``."""
    from fae import distributed
    from fae.predict import merge_shards

    distributed.barrier()
    main = distributed.is_main()
    code = _merged(*merge_shards(folder), folder, said=True) if main else int(bool(failures))
    distributed.close()
    return code
