"""Package test masks into ``submission.zip``, atomically.

The zip holds one ``<id>.tif`` per test image at its root.  It is first
written under a temporary name in the destination folder, checked, and only
then moved to the final path with :func:`os.replace`, so the final path never
holds a half-written zip: after a crash or a full disk it holds either the
previous complete zip or nothing.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from nx47_pipeline.io.atomic import atomic_path

_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class PackagingError(RuntimeError):
    """The submission could not be written (names the file and the problem)."""


def check_entry_id(volume_id: str) -> str:
    """Return ``volume_id`` if it is safe as a zip entry name, else raise.

    Parameters
    ----------
    volume_id : str
        A test image id (the file stem).
    """
    if not _PLAIN_ID.match(volume_id) or volume_id in (".", "..") or volume_id.startswith("."):
        raise PackagingError(f"volume id {volume_id!r} is not a plain id usable as a zip entry name")
    return volume_id


def write_submission(
    masks: Sequence[tuple[str, Path]],
    out_zip: str | Path,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Write ``submission.zip`` from ``(id, mask_tif_path)`` pairs.

    Parameters
    ----------
    masks : sequence of (str, Path)
        Test ids with the path of their uint8 0/1 mask TIFF.
    out_zip : path
        Final path of the zip.
    on_progress : callable, optional
        ``on_progress(done, total, id)`` after each entry.

    Returns
    -------
    Path
        The final zip path.

    Raises
    ------
    PackagingError
        A mask is missing, or the zip could not be written (e.g. the disk is
        full). The final path is left untouched in that case.
    """
    out_zip = Path(out_zip)
    try:
        with atomic_path(out_zip, fsync=True) as tmp:
            _write_zip(tmp, masks, on_progress)
    except OSError as exc:
        raise PackagingError(f"{out_zip}: could not write the submission: {exc}") from exc
    return out_zip


def _write_zip(tmp: Path, masks: Sequence[tuple[str, Path]], on_progress) -> None:
    """Write and check the zip at ``tmp`` (one ``<id>.tif`` per mask, at the root)."""
    seen: set[str] = set()
    total = len(masks)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i, (volume_id, path) in enumerate(masks, start=1):
            check_entry_id(volume_id)
            if volume_id in seen:
                raise PackagingError(f"duplicate test id {volume_id!r} in the submission")
            seen.add(volume_id)
            path = Path(path)
            if not path.is_file():
                raise PackagingError(f"{path}: mask for test id {volume_id!r} is missing")
            zf.write(path, arcname=f"{volume_id}.tif")
            if on_progress is not None:
                on_progress(i, total, volume_id)
    with zipfile.ZipFile(tmp) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise PackagingError(f"{tmp}: entry {bad} failed its CRC check")
        names = sorted(zf.namelist())
    if names != sorted(f"{v}.tif" for v in seen):
        raise PackagingError(f"{tmp}: entries {names} do not match the test ids")
