"""``nx47 verify-journal``: check the hash chain of a journal.jsonl."""

from __future__ import annotations

import argparse

from nx47_pipeline.telemetry.journal import verify_main

NAME = "verify-journal"


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(NAME, help="verify the hash chain of a journal.jsonl",
                       description="Exit 0 and print the chain head if intact; non-zero naming the first bad line.")
    v.add_argument("path")


def main(args: argparse.Namespace) -> int:
    return verify_main(args.path)
