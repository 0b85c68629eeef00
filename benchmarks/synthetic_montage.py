"""Draw the README's picture of the synthetic dataset: a healthy subject, then one per anomaly kind.

python benchmarks/synthetic_montage.py docs/synthetic_montage.png
"""

from __future__ import annotations

import argparse

import numpy as np

from fae.data.synthetic import ANOMALY_KINDS, synthesize_subject
from fae.viz import save_montage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--modality", default="t1")
    args = parser.parse_args()
    healthy = synthesize_subject("healthy", 0, None, modalities=(args.modality,))
    volumes, overlays, titles = (
        [healthy.images[args.modality]],
        [None],
        [f"healthy ({args.modality})"],
    )
    rows = [[70, 78, 86, 94]]
    for i, kind in enumerate(ANOMALY_KINDS):
        subject = synthesize_subject("anomalous", i, kind, modalities=(args.modality,))
        volumes.append(subject.images[args.modality])
        overlays.append(subject.seg > 0)
        titles.append(f"{kind} ({args.modality})")
        z = int(np.argmax((subject.seg > 0).sum(axis=(0, 1))))  # the lesion's largest slice
        rows.append([z - 6, z - 2, z + 2, z + 6])
    save_montage(volumes, args.out, titles=titles, overlays=overlays, slices=rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
