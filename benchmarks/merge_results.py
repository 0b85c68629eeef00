"""Merge ``fae benchmark`` summaries (results.json) of methods run separately into one table.

Each method's row comes from the last file that has it; Welch's tests of FAE against every
other method are redone on the per-seed values. Writes results.csv/.md/.json and bars.png.

    python benchmarks/merge_results.py A/results.json B/results.json --out merged/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fae.benchmark import merge_summaries, write_tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary = merge_summaries([json.loads(path.read_text()) for path in args.results])
    write_tables(summary, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
