"""``nx47 nnunet-export``: the Kaggle layout as nnU-Net v2 raw data (``RAW/Dataset047_Vesuvius/``)."""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.nnunet.export import ExportError, export_nnunet

NAME = "nnunet-export"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="write the data as nnU-Net raw data (NX47's train/val split as fold 0)",
                       description="Writes RAW/DatasetNNN_Vesuvius/ (dataset.json with label 2 as nnU-Net's "
                                   "ignore label, imagesTr/*_0000.tif with spacing files, labelsTr, imagesTs, "
                                   "splits_final.json equal to NX47's scroll-aware train/val split).")
    p.add_argument("--data", default="auto", help="data root (Kaggle layout; default: auto)")
    p.add_argument("--out", required=True, metavar="RAW", help="nnU-Net's raw folder (nnUNet_raw)")
    p.add_argument("--dataset-id", type=int, default=47, help="nnU-Net dataset id (default 47)")
    p.add_argument("--max-train-volumes", type=int, default=24, help="as nx47 run (0 = all; default 24)")
    p.add_argument("--max-val-volumes", type=int, default=8, help="as nx47 run (0 = all; default 8)")
    p.add_argument("--seed", type=int, default=47, help="the selection's seed, as nx47 run (default 47)")


def main(args: argparse.Namespace) -> int:
    try:
        res = export_nnunet(args.data, args.out, dataset_id=args.dataset_id,
                            max_train_volumes=args.max_train_volumes, max_val_volumes=args.max_val_volumes,
                            seed=args.seed)
    except (ExportError, ValueError, OSError) as exc:
        print(f"nx47 {NAME}: {exc}", file=sys.stderr)
        return 2
    print(f"nnU-Net raw dataset written to {res.folder}: {len(res.train_ids)} training + {len(res.val_ids)} "
          f"validation cases (splits_final.json fold 0), {len(res.test_ids)} test images")
    return 0
