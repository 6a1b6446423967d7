"""``nx47 export-model``: copy a finished run's model bundle out (to upload as a Kaggle dataset)."""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.model.bundle import BundleError, export_bundle, load_bundle

NAME = "export-model"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="copy a run's model bundle (model.json + files) to a folder",
                       description="Copies <run>/model/model.json and the files it lists to --out, "
                                   "verifying every sha256. Use the folder with `nx47 run --model`.")
    p.add_argument("--run", required=True, help="the output folder of a finished training run")
    p.add_argument("--out", required=True, help="the bundle folder to create (new or empty)")


def main(args: argparse.Namespace) -> int:
    try:
        out = export_bundle(args.run, args.out)
        bundle = load_bundle(out, device="cpu")
    except (BundleError, FileNotFoundError) as exc:
        print(f"nx47 export-model: {exc}", file=sys.stderr)
        return 2
    print(f"model bundle written to {out}\n{bundle.summary()}")
    return 0
