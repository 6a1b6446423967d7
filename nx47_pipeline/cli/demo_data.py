"""``nx47 demo-data``: generate the synthetic demo dataset in the Kaggle layout."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nx47_pipeline.data.demo import generate_demo_dataset, parse_counts, parse_shape

NAME = "demo-data"


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(NAME, help="generate the synthetic demo dataset (Kaggle layout)",
                       description="Generate scroll-like volumes with labels in the competition's layout and format.")
    d.add_argument("--out", required=True, help="folder to write (created)")
    d.add_argument("--n-train", type=int, default=12, help="training pairs (default 12)")
    d.add_argument("--n-test", type=int, default=2, help="test volumes (default 2)")
    d.add_argument("--shape", default=None, help="edge length (e.g. 320) or Z,Y,X; default: mixed small shapes")
    d.add_argument("--seed", type=int, default=47)
    d.add_argument("--variant", choices=("a", "b"), default="a",
                   help="generator variant: a (the demo data) or b (held out: other spacing, thickness, "
                        "noise, lighting and label offset)")
    d.add_argument("--shapes", default=None, metavar="EDGE:COUNT,...",
                   help="training pairs' shapes by count, summing to --n-train (the real data: "
                        "320:738,256:47,384:1); test volumes take the most common; replaces --shape")
    d.add_argument("--scrolls", default=None, metavar="ID:COUNT,...",
                   help="scrolls by count, summing to --n-train (the pairs') or to --n-train + --ghost-rows "
                        "(train.csv's rows; the real data: 34117:382,35360:176,26010:130,26002:88,44430:17,"
                        "53997:13 = 786 pairs + 20 rows)")
    d.add_argument("--distinct", type=int, default=0, metavar="N",
                   help="generate about N distinct volumes; every other id is a hard link of one of its own "
                        "split, shape and scroll (timing and memory at scale; default 0: all distinct)")
    d.add_argument("--ghost-rows", type=int, default=2, help="train.csv rows without files (real: 20)")
    d.add_argument("--deprecated", type=int, default=2, help="deprecated_train_* pairs (real: 20)")


def main(args: argparse.Namespace) -> int:
    try:
        shape = parse_shape(args.shape) if args.shape else None
        shapes = parse_counts(args.shapes, what="--shapes") if args.shapes else None
        scrolls = parse_counts(args.scrolls, what="--scrolls") if args.scrolls else None
        root = generate_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, shape=shape,
                                     seed=args.seed, variant=args.variant, shapes=shapes, scrolls=scrolls,
                                     distinct=args.distinct, n_ghost=args.ghost_rows,
                                     n_deprecated=args.deprecated)
    except ValueError as exc:
        print(f"nx47 demo-data: {exc}", file=sys.stderr)
        return 2
    print(f"demo dataset written to {root}")
    if args.distinct:
        files = [p for folder in ("train_images", "test_images") for p in (Path(root) / folder).glob("*.tif")]
        n_distinct = len({os.stat(p).st_ino for p in files})
        print(f"{len(files)} image files, {n_distinct} distinct volumes, {len(files) - n_distinct} hard links "
              "(or copies) of them")
    return 0
