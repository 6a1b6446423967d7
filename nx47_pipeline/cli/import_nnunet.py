"""``nx47 import-nnunet``: nnU-Net v2 result folders as an NX47 model bundle (kind ``nnunet``)."""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.model.bundle import BundleError, load_bundle
from nx47_pipeline.model.predictor import PostChoice
from nx47_pipeline.nnunet.bundle import CHECKPOINT, MemberSpec, import_nnunet, parse_member

NAME = "import-nnunet"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="turn nnU-Net result folders into a model bundle (kind nnunet)",
                       description="Reads dataset.json, plans.json and fold_<k>/<checkpoint> of each result folder "
                                   "(weights with torch.load(weights_only=True)) and writes a bundle whose "
                                   "model.json lists every file with its sha256. Several folders form a "
                                   "weighted ensemble (probabilities averaged with the weights).")
    p.add_argument("--results", metavar="DIR", help="an nnU-Net trained-model folder (weight 1)")
    p.add_argument("--member", action="append", default=[], metavar="DIR[:WEIGHT]",
                   help="another result folder of the ensemble, with its weight (default 1); repeatable")
    p.add_argument("--folds", nargs="+", default=None, help="folds to take (default: all with the checkpoint)")
    p.add_argument("--checkpoint", default=CHECKPOINT, help=f"checkpoint file name (default {CHECKPOINT})")
    p.add_argument("--tile-step", type=float, default=0.5, help="window step as a fraction of the patch (0.5)")
    p.add_argument("--no-mirroring", action="store_true", help="no mirror test-time augmentation")
    p.add_argument("--low", type=float, default=0.5, help="hysteresis low threshold (default 0.5)")
    p.add_argument("--high", type=float, default=0.5, help="hysteresis high threshold (default 0.5)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="the bundle folder to create (new or empty)")


def main(args: argparse.Namespace) -> int:
    try:
        members = ([MemberSpec(args.results)] if args.results else []) + [parse_member(m) for m in args.member]
        if not members:
            raise BundleError("give --results DIR (and --member DIR[:WEIGHT] for an ensemble)")
        out = import_nnunet(members, args.out, folds=args.folds, checkpoint=args.checkpoint,
                            tile_step=args.tile_step, use_mirroring=not args.no_mirroring,
                            post=PostChoice(low=args.low, high=args.high))
        bundle = load_bundle(out, device="cpu")
    except (BundleError, ValueError, OSError) as exc:
        print(f"nx47 {NAME}: {exc}", file=sys.stderr)
        return 2
    print(f"model bundle written to {out}\n{bundle.summary()}")
    return 0
