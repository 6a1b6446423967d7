"""Visual QA marks: pass / fail / note per volume, kept in the run folder.

``<out>/qa.json``::

    {"volumes": {"val/123": {"mark": "fail", "note": "misses the lower sheet",
                             "ts": 1764640000.0}}}

Keys are the previewer's volume keys (``<split>/<volume_id>``).  The file is
rewritten atomically on every change; the runs page shows its counts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from nx47_pipeline.io.run_folder import RunFolder
from nx47_widgets.loaders import read_document, write_document

__all__ = ["MARKS", "QaMarks"]

#: The file of the marks, in the run folder.
#: The marks a volume can get.
MARKS = ("pass", "fail")


class QaMarks:
    """The QA marks of one run folder.

    Parameters
    ----------
    folder : str or path-like
        The run folder (``qa.json`` there).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.volumes: dict[str, dict[str, Any]] = {}
        self.version = 0

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "QaMarks":
        """The marks saved in ``folder`` (none when there is no readable ``qa.json``)."""
        qa = cls(folder)
        data = read_document(qa.path)
        if isinstance(data, dict) and isinstance(data.get("volumes"), dict):
            qa.volumes = {str(k): dict(v) for k, v in data["volumes"].items() if isinstance(v, dict)}
        return qa

    @property
    def path(self) -> Path:
        return RunFolder(self.folder).qa

    def get(self, key: str) -> dict[str, Any]:
        """``{"mark": ..., "note": ...}`` of volume ``key`` (empty when unmarked)."""
        return dict(self.volumes.get(key, {}))

    def mark(self, key: str, *, mark: str | None = None, note: str | None = None) -> None:
        """Set the mark and/or the note of volume ``key`` and save ``qa.json``.

        Parameters
        ----------
        key : str
            ``<split>/<volume_id>``.
        mark : str, optional
            ``"pass"``, ``"fail"``, or ``""`` to clear it.
        note : str, optional
            Free text (``""`` clears it).

        Raises
        ------
        ValueError
            For another mark.
        """
        if mark not in (None, "", *MARKS):
            raise ValueError(f"mark must be one of {MARKS} (or empty), got {mark!r}")
        entry = self.volumes.setdefault(key, {})
        if mark is not None:
            entry["mark"] = mark
        if note is not None:
            entry["note"] = note
        entry["ts"] = time.time()
        if not entry.get("mark") and not entry.get("note"):
            del self.volumes[key]
        self.save()

    def save(self) -> None:
        """Write ``qa.json`` (atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_document(self.path, {"volumes": self.volumes})
        self.version += 1

    def counts(self) -> dict[str, int]:
        """Volumes per mark, and ``note`` for those with a note."""
        out = {m: 0 for m in MARKS}
        out["note"] = 0
        for entry in self.volumes.values():
            if entry.get("mark") in MARKS:
                out[entry["mark"]] += 1
            if entry.get("note"):
                out["note"] += 1
        return out
