"""What the dashboard reads from run folders, below ``state/``.

The reducers in :mod:`nx47_widgets.state` fold events and documents into
what is shown; the files those documents come from -- ``cluster.json``, a
journal's head and tail, ``stats.json``, ``infer_key.json``, ``qa.json``,
per-volume score records -- are opened here only, with the names of
:mod:`nx47_pipeline.io.run_folder`.  Every reader returns None (or empty)
for a file that is missing or unreadable, except :func:`read_cluster_doc`,
whose callers tell a missing file from a malformed one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import INFER_KEY, RunFolder

__all__ = ["journal_lines", "journal_tail", "read_cluster_doc", "read_document", "read_infer_key", "read_stats",
           "write_document"]


def read_document(path: str | os.PathLike) -> Any:
    """The JSON document at ``path``; None when it is missing, unreadable or not JSON."""
    return read_json(Path(path))


def write_document(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON at ``path``, atomically."""
    write_json(Path(path), data)


def read_stats(folder: str | os.PathLike) -> dict[str, Any]:
    """``stats.json`` of the run in ``folder`` ({} when there is none)."""
    data = read_json(RunFolder(folder).stats)
    return data if isinstance(data, dict) else {}


def read_infer_key(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``infer_key.json`` of an ``nx47 infer`` folder (None when it is not one)."""
    data = read_json(Path(folder) / INFER_KEY)
    return data if isinstance(data, dict) else None


def read_cluster_doc(path: str | os.PathLike) -> Any:
    """The parsed ``cluster.json`` at ``path``.

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        When it is not JSON.
    """
    return json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))


def journal_lines(folder: str | os.PathLike, *, containing: str = "") -> Iterator[dict[str, Any]]:
    """The events of ``folder``'s journal as dicts, in order (lines without
    ``containing`` are skipped before parsing; torn or bad lines too).
    Nothing when there is no readable journal."""
    try:
        fh = open(RunFolder(folder).journal, encoding="utf-8", errors="replace")
    except OSError:
        return
    with fh:
        for line in fh:
            if containing and containing not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


def journal_tail(journal: str | os.PathLike, max_bytes: int) -> list[dict[str, Any]]:
    """The complete lines in the last ``max_bytes`` of ``journal``, parsed (a torn last line skipped)."""
    journal = Path(journal)
    size = journal.stat().st_size
    with open(journal, "rb") as fh:
        if size > max_bytes:
            fh.seek(size - max_bytes)
            fh.readline()  # a partial line
        data = fh.read()
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
