"""The ``nx47`` command line: one module per command (:mod:`.dispatch` holds the parser)."""

from nx47_pipeline.cli.dispatch import main

__all__ = ["main"]
