"""``nx47 score``: score masks (folder or zip) against labels with the local metric.

Its arguments are parsed by :func:`nx47_pipeline.model.metric.score_main`.
"""

from __future__ import annotations

import argparse

from nx47_pipeline.model.metric import score_main

NAME = "score"


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(NAME, help="score masks (folder or zip) against labels: --pred DIR|ZIP --labels DIR [--json]",
                   add_help=False)


def main(argv: list[str]) -> int:
    return score_main(argv)
