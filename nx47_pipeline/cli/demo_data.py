"""``nx47 demo-data``: generate the synthetic demo dataset in the Kaggle layout."""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.data.demo import generate_demo_dataset, parse_shape

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


def main(args: argparse.Namespace) -> int:
    try:
        shape = parse_shape(args.shape) if args.shape else None
    except ValueError as exc:
        print(f"nx47 demo-data: --shape: {exc}", file=sys.stderr)
        return 2
    root = generate_demo_dataset(args.out, n_train=args.n_train, n_test=args.n_test, shape=shape, seed=args.seed,
                                 variant=args.variant)
    print(f"demo dataset written to {root}")
    return 0
