"""Atomic file writes: a reader never sees half a file at its final name.

Every artifact of a run goes through :func:`atomic_path`: the content is
written to a temporary name in the destination folder, then moved over the
final name with :func:`os.replace` (atomic on POSIX within one file system).
On any error the temporary file is removed and the final name keeps its
previous content, if any.
"""

from __future__ import annotations

import contextlib

import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; replace ``path`` with it on success.

    Parameters
    ----------
    path : path
        Final destination (its folder is created).
    fsync : bool
        Flush the temporary file to disk before the rename.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-1:])  # keep the extension: some writers infer the format from it
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
    return Path(path)
