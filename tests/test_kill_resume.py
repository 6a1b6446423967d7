"""Kill, resume, full disk, stop and budget: a run survives what real runs meet.

Fast cases (CI): the submission writer under a full disk (an injected ENOSPC
and a real file-size limit in a subprocess).  Slow cases (``-m slow``): full
pipeline runs killed with SIGKILL at each stage and rerun, stopped with the
cancel token during each stage, run out of disk, and swept over tiny budgets.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_corpus import synthetic_pair, write_tif  # noqa: E402


def _masks(tmp_path: Path, ids: list[str]) -> list[tuple[str, Path]]:
    out = []
    for i, vid in enumerate(ids):
        p = tmp_path / "test" / f"{vid}.tif"
        _, lab = synthetic_pair((32, 32, 32), seed=100 + i)
        write_tif(p, (lab == 1).astype(np.uint8))
        out.append((vid, p))
    return out


def _zip_ok(path: Path, ids: list[str]) -> None:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(f"{v}.tif" for v in ids)


# ----------------------------------------------------------------------
# Full disk: the submission writer (fast)
# ----------------------------------------------------------------------
def test_enospc_while_zipping_leaves_previous_zip_untouched(tmp_path, monkeypatch):
    from nx47_pipeline import package

    masks = _masks(tmp_path, ["1001", "1002", "1003"])
    final = tmp_path / "submission.zip"
    package.write_submission(masks[:2], final)
    before = final.read_bytes()

    real_write = zipfile.ZipFile.write
    calls = {"n": 0}

    def full_disk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    with pytest.raises(package.PackagingError) as info:
        package.write_submission(masks, final)
    assert "submission.zip" in str(info.value)
    assert "No space left" in str(info.value)
    # the previous complete submission is still there, byte for byte
    assert final.read_bytes() == before
    _zip_ok(final, ["1001", "1002"])
    # no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.zip", "test"]


def test_real_file_size_limit_gives_clean_error_and_no_zip(tmp_path):
    """A genuine write failure (RLIMIT_FSIZE, i.e. EFBIG from the kernel) in a
    subprocess: the writer reports it, and no zip exists at the final path."""
    masks = _masks(tmp_path, ["2001", "2002"])
    # incompressible masks so the zip must exceed the limit
    rng = np.random.default_rng(0)
    for _, p in masks:
        tifffile.imwrite(p, rng.integers(0, 2, size=(32, 64, 64), dtype=np.uint8))
    final = tmp_path / "out" / "submission.zip"
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from nx47_pipeline import package
        masks = {[(v, str(p)) for v, p in masks]!r}
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
        try:
            package.write_submission([(v, Path(p)) for v, p in masks], {str(final)!r})
        except package.PackagingError as exc:
            print("PACKAGING_ERROR", exc)
            sys.exit(3)
        print("NO_ERROR")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "PACKAGING_ERROR" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir()] == []
