"""The ``nx47`` command line: one module per command."""

from nx47_pipeline.cli.commands import main

__all__ = ["main"]
