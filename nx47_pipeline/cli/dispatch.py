"""The ``nx47`` command line: the parser and the dispatch to one module per command.

Commands
--------
run             run the pipeline (discovery -> ... -> submission.zip)
demo-data       generate the synthetic demo dataset in the Kaggle layout
verify-journal  check the hash chain of a journal.jsonl
score           score predicted masks against labels with the local metric
plan            project a run's duration from an earlier preflight
serve           serve dashboard.ipynb with Voila on 127.0.0.1
export-model    copy a run's model bundle out (for `run --model` / Kaggle)
kaggle-kit      build the offline Kaggle kit (wheels + notebook + README)
infer           segment a volume of any size with a bundle, chunk by chunk (zarr in, zarr out)
nnunet-export   write the data as nnU-Net v2 raw data (NX47's split as fold 0)
import-nnunet   turn nnU-Net v2 result folders into a model bundle (kind nnunet)
"""

from __future__ import annotations

import argparse
import sys

from nx47_pipeline.cli import (
    demo_data, export_model, import_nnunet, infer, kaggle_kit, nnunet_export, plan, run, score, serve, verify_journal,
)

#: Commands in help order; ``score`` parses its own arguments.
COMMANDS = (run, demo_data, verify_journal, score, plan, serve, export_model, kaggle_kit, infer, nnunet_export,
            import_nnunet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nx47",
        description="NX47: live-monitored 3D papyrus-surface segmentation (Vesuvius Challenge - Surface Detection).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == score.NAME:
        return score.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {c.NAME: c.main for c in COMMANDS if c is not score}
    return handlers[args.command](args)
