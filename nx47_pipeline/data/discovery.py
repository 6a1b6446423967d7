"""Find the data: resolve the data root and inventory its volumes.

A data root has the Kaggle layout::

    train.csv               id,scroll_id (may list ids without files)
    test.csv                id,scroll_id
    train_images/<id>.tif   CT chunk, uint8, LZW
    train_labels/<id>.tif   0 background, 1 surface, 2 ignore
    test_images/<id>.tif
    deprecated_*/           older releases: never used

:func:`discover` lists the files, pairs images with labels, reads the csvs
and the TIFF headers (no pixel decoding) and reports everything odd as a
:class:`DiscoveryIssue` that names the id or file: orphans, ghost csv rows,
malformed csv rows, duplicates, unreadable or mismatched files.  A bad file is
left out of the inventory; it never stops discovery.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nx47_pipeline.io.volumes import VolumeError, read_header
from nx47_pipeline.telemetry.events import Severity

#: Kaggle mount points, in probe order.
KAGGLE_ROOTS: tuple[str, ...] = (
    "/kaggle/input/vesuvius-challenge-surface-detection",
    "/kaggle/input/competitions/vesuvius-challenge-surface-detection",
)

#: File suffixes taken as TIFF volumes (lower case).
TIFF_SUFFIXES = (".tif", ".tiff")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

ProgressFn = Callable[[int, int, str], None]


def default_demo_root() -> Path:
    """Where the demo dataset lives.

    Returns
    -------
    pathlib.Path
        ``$NX47_DEMO_ROOT`` when set, else ``<repo root>/demo_data`` (the
        repo root is the folder holding the ``nx47_pipeline`` package).
    """
    env = os.environ.get("NX47_DEMO_ROOT", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "demo_data"


def resolve_data_root(data_root: str | os.PathLike[str] = "auto") -> Path:
    """Turn ``data_root`` into an existing folder; never generates data.

    Parameters
    ----------
    data_root : str or path-like
        A folder, ``"auto"`` (first of :data:`KAGGLE_ROOTS` that exists, else
        the demo root) or ``"demo"`` (the demo root).  The demo root counts
        once it holds ``train.csv``; ``nx47 demo-data`` and ``nx47 serve``
        generate it (:func:`nx47_pipeline.data.demo.ensure_demo_dataset`).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        A given folder does not exist, or ``auto``/``demo`` found nothing
        (the message names what was probed and the command that generates
        the demo dataset).
    NotADirectoryError
        ``data_root`` is a file.
    """
    text = os.fspath(data_root)
    key = text.strip().lower()
    if key in ("auto", "demo"):
        if key == "auto":
            for cand in KAGGLE_ROOTS:
                if Path(cand).is_dir():
                    return Path(cand)
        demo = default_demo_root()
        if (demo / "train.csv").is_file():
            return demo
        probed = ", ".join(KAGGLE_ROOTS) + ", " if key == "auto" else ""
        raise FileNotFoundError(
            f"data_root={text!r}: no dataset found (probed {probed}{demo}); "
            f"generate one with `nx47 demo-data --out {demo}`"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data_root {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"data_root {str(path)!r} is a file, not a folder")
    return path


@dataclass(frozen=True)
class VolumeRecord:
    """One volume found on disk.

    Attributes
    ----------
    id : str
        File stem, e.g. ``"1407735"``.
    image_path : pathlib.Path
    label_path : pathlib.Path or None
        None for test volumes.
    shape : tuple of int or None
        (Z, Y, X) from the TIFF header; None when headers were not read.
    scroll_id : str or None
        From the csv; None when unknown.
    split : str
        ``"train"`` or ``"test"``.
    """

    id: str
    image_path: Path
    label_path: Path | None
    shape: tuple[int, int, int] | None
    scroll_id: str | None
    split: str


@dataclass(frozen=True)
class DiscoveryIssue:
    """Something odd found while discovering.

    Attributes
    ----------
    code : str
        ``orphan_image``, ``orphan_label``, ``csv_ghost``, ``csv_malformed``,
        ``csv_duplicate``, ``csv_header``, ``csv_unreadable``, ``not_in_csv``,
        ``duplicate_id``, ``stray_file``, ``missing_dir``, ``no_pairs`` or a
        :class:`~nx47_pipeline.volume_io.VolumeError` code.
    subject : str
        The id or file concerned.
    message : str
        A sentence for a person.
    level : str
        :class:`~nx47_pipeline.telemetry.events.Severity`: ``WARNING`` (the
        rest goes on) or ``ERROR`` (the item is left out).
    """

    code: str
    subject: str
    message: str
    level: Severity = Severity.WARNING


@dataclass
class Inventory:
    """What :func:`discover` found, sorted by id (numeric ids numerically).

    Attributes
    ----------
    root : pathlib.Path
    pairs : list of VolumeRecord
        Usable training pairs (image + label, headers valid and matching).
    test : list of VolumeRecord
        Usable test volumes.
    issues : list of DiscoveryIssue
    ignored_dirs : list of pathlib.Path
        ``deprecated_*`` folders seen and skipped.
    """

    root: Path
    pairs: list[VolumeRecord] = field(default_factory=list)
    test: list[VolumeRecord] = field(default_factory=list)
    issues: list[DiscoveryIssue] = field(default_factory=list)
    ignored_dirs: list[Path] = field(default_factory=list)

    @property
    def pair_ids(self) -> list[str]:
        """Ids of the usable training pairs."""
        return [r.id for r in self.pairs]

    @property
    def test_ids(self) -> list[str]:
        """Ids of the usable test volumes."""
        return [r.id for r in self.test]

    @property
    def warnings(self) -> list[DiscoveryIssue]:
        """Issues of level ``WARNING``."""
        return [i for i in self.issues if i.level == Severity.WARNING]

    @property
    def errors(self) -> list[DiscoveryIssue]:
        """Issues of level ``ERROR``."""
        return [i for i in self.issues if i.level == Severity.ERROR]

    def issues_with(self, code: str) -> list[DiscoveryIssue]:
        """Issues carrying ``code``."""
        return [i for i in self.issues if i.code == code]

    def summary(self) -> dict[str, object]:
        """Counts for logs and events."""
        counts: dict[str, int] = {}
        for issue in self.issues:
            counts[issue.code] = counts.get(issue.code, 0) + 1
        return {
            "root": str(self.root),
            "n_pairs": len(self.pairs),
            "n_test": len(self.test),
            "n_warnings": len(self.warnings),
            "n_errors": len(self.errors),
            "issue_counts": counts,
        }


def id_sort_key(vid: str) -> tuple[int, int, str]:
    """Sort key: numeric ids by value first, then other ids by text."""
    if vid.isdigit():
        return (0, int(vid), vid)
    return (1, 0, vid)


# ----------------------------------------------------------------------
# csv
# ----------------------------------------------------------------------
def read_id_csv(path: Path, issues: list[DiscoveryIssue]) -> dict[str, str | None] | None:
    """Read an ``id,scroll_id`` csv; problems are appended to ``issues``.

    Parameters
    ----------
    path : pathlib.Path
        The csv file.
    issues : list of DiscoveryIssue
        Receives one issue per malformed or duplicate row.

    Returns
    -------
    dict or None
        id -> scroll_id (None when empty), in file order; None when the
        file is absent or unreadable.
    """
    if not path.is_file():
        return None
    name = path.name
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        issues.append(
            DiscoveryIssue("csv_unreadable", str(path), f"{name} cannot be read: {exc}", Severity.ERROR)
        )
        return None
    out: dict[str, str | None] = {}
    if not rows:
        issues.append(DiscoveryIssue("csv_header", str(path), f"{name} is empty", Severity.WARNING))
        return out
    header = [h.strip().lower() for h in rows[0]]
    start = 1
    if "id" in header:
        id_col = header.index("id")
        scroll_col = header.index("scroll_id") if "scroll_id" in header else None
        if scroll_col is None:
            issues.append(
                DiscoveryIssue(
                    "csv_header", str(path),
                    f"{name} has no scroll_id column (header {rows[0]!r}): scroll ids unknown",
                )
            )
        width = len(header)
    else:
        issues.append(
            DiscoveryIssue(
                "csv_header", str(path),
                f"{name} has no 'id' header (first row {rows[0]!r}): read as id,scroll_id without header",
            )
        )
        id_col, scroll_col, width, start = 0, 1, 2, 0
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        cells = [c.strip() for c in row]
        vid = cells[id_col] if id_col < len(cells) else ""
        problem = None
        if len(cells) != width:
            problem = f"expected {width} fields, got {len(cells)}"
        elif not vid:
            problem = "empty id"
        elif not _ID_RE.match(vid):
            problem = f"id {vid!r} is not a plain name"
        if problem is not None:
            issues.append(
                DiscoveryIssue(
                    "csv_malformed", f"{name}:{lineno}",
                    f"{name} line {lineno} {row!r} is malformed ({problem}); skipped",
                )
            )
            continue
        scroll = cells[scroll_col] if scroll_col is not None else ""
        scroll_val = scroll or None
        if vid in out:
            prev = out[vid]
            extra = (
                f" with a different scroll_id ({prev!r} then {scroll_val!r}; keeping the first)"
                if prev != scroll_val
                else ""
            )
            issues.append(
                DiscoveryIssue(
                    "csv_duplicate", vid, f"{name} line {lineno}: id {vid} listed again{extra}"
                )
            )
            continue
        out[vid] = scroll_val
    return out


# ----------------------------------------------------------------------
# files
# ----------------------------------------------------------------------
def _list_tiffs(folder: Path, issues: list[DiscoveryIssue]) -> dict[str, Path]:
    """id -> path of the TIFF files in ``folder`` (duplicates reported)."""
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        issues.append(
            DiscoveryIssue("missing_dir", str(folder), f"{folder} cannot be listed: {exc}", Severity.ERROR)
        )
        return {}
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files, our own temporary files
        if entry.is_dir() or entry.suffix.lower() not in TIFF_SUFFIXES:
            what = "a folder" if entry.is_dir() else "not a TIFF volume"
            issues.append(
                DiscoveryIssue("stray_file", str(entry), f"{entry} is {what}; ignored")
            )
            continue
        found.setdefault(entry.stem, []).append(entry)
    out: dict[str, Path] = {}
    for vid, paths in found.items():
        # prefer ".tif" over ".tiff", then the plain spelling
        paths.sort(key=lambda p: (p.suffix != ".tif", p.suffix.lower() != ".tif", p.name))
        out[vid] = paths[0]
        if len(paths) > 1:
            others = ", ".join(p.name for p in paths[1:])
            issues.append(
                DiscoveryIssue(
                    "duplicate_id", vid,
                    f"{folder.name}: id {vid} has several files ({paths[0].name}, {others}); "
                    f"using {paths[0].name}",
                )
            )
    return out


def discover(
    root: str | os.PathLike[str],
    *,
    read_headers: bool = True,
    on_progress: ProgressFn | None = None,
) -> Inventory:
    """Inventory the volumes under a data root.

    Parameters
    ----------
    root : str or path-like
        A folder with the Kaggle layout (see the module docstring).
    read_headers : bool
        Read every TIFF header (shape, dtype, truncation; no pixel decoding)
        and leave out files that fail.  False only lists files (shape None).
    on_progress : callable, optional
        ``on_progress(done, total, what)`` after each file; may raise to
        cancel.

    Returns
    -------
    Inventory

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist.
    NotADirectoryError
        ``root`` is a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data root {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data root {str(root)!r} is a file, not a folder")
    issues: list[DiscoveryIssue] = []
    inv = Inventory(root=root, issues=issues)
    inv.ignored_dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("deprecated")
    )

    train_csv = read_id_csv(root / "train.csv", issues)
    test_csv = read_id_csv(root / "test.csv", issues)

    def folder(name: str, required: bool) -> dict[str, Path]:
        path = root / name
        if not path.is_dir():
            if required:
                issues.append(
                    DiscoveryIssue("missing_dir", str(path), f"{path} does not exist", Severity.WARNING)
                )
            return {}
        return _list_tiffs(path, issues)

    images = folder("train_images", True)
    labels = folder("train_labels", bool(images))
    tests = folder("test_images", True)

    # pairing
    pair_ids = sorted(set(images) & set(labels), key=id_sort_key)
    for vid in sorted(set(images) - set(labels), key=id_sort_key):
        issues.append(
            DiscoveryIssue(
                "orphan_image", vid,
                f"train image {images[vid].name} has no label in train_labels/; left out",
            )
        )
    for vid in sorted(set(labels) - set(images), key=id_sort_key):
        issues.append(
            DiscoveryIssue(
                "orphan_label", vid,
                f"train label {labels[vid].name} has no image in train_images/; left out",
            )
        )
    for csv_ids, files, csv_name, what in (
        (train_csv, set(images) | set(labels), "train.csv", "train_images/"),
        (test_csv, set(tests), "test.csv", "test_images/"),
    ):
        if csv_ids is None:
            continue
        for vid in sorted(set(csv_ids) - files, key=id_sort_key):
            issues.append(
                DiscoveryIssue(
                    "csv_ghost", vid, f"{csv_name} lists id {vid} but {what} has no file for it"
                )
            )
        for vid in sorted(files - set(csv_ids), key=id_sort_key):
            issues.append(
                DiscoveryIssue(
                    "not_in_csv", vid,
                    f"id {vid} has files but is not listed in {csv_name}; scroll id unknown",
                )
            )

    def scroll_of(vid: str, table: dict[str, str | None] | None) -> str | None:
        return None if table is None else table.get(vid)

    total = 2 * len(pair_ids) + len(tests)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, what)

    def header(path: Path) -> tuple[tuple[int, int, int] | None, VolumeError | None]:
        if not read_headers:
            return None, None
        try:
            return read_header(path).shape, None
        except VolumeError as exc:
            return None, exc

    for vid in pair_ids:
        ishape, ierr = header(images[vid])
        tick(str(images[vid]))
        lshape, lerr = header(labels[vid])
        tick(str(labels[vid]))
        bad = False
        for err in (ierr, lerr):
            if err is not None:
                bad = True
                issues.append(
                    DiscoveryIssue(err.code, err.path, f"{err}; pair {vid} left out", Severity.ERROR)
                )
        if not bad and ishape != lshape:
            bad = True
            issues.append(
                DiscoveryIssue(
                    "shape_mismatch", str(labels[vid]),
                    f"{labels[vid]}: label shape {lshape} does not match image shape "
                    f"{ishape}; pair {vid} left out",
                    Severity.ERROR,
                )
            )
        if bad:
            continue
        inv.pairs.append(
            VolumeRecord(
                id=vid, image_path=images[vid], label_path=labels[vid], shape=ishape,
                scroll_id=scroll_of(vid, train_csv), split="train",
            )
        )
    for vid in sorted(tests, key=id_sort_key):
        shape, err = header(tests[vid])
        tick(str(tests[vid]))
        if err is not None:
            issues.append(
                DiscoveryIssue(err.code, err.path, f"{err}; test volume {vid} left out", Severity.ERROR)
            )
            continue
        inv.test.append(
            VolumeRecord(
                id=vid, image_path=tests[vid], label_path=None, shape=shape,
                scroll_id=scroll_of(vid, test_csv), split="test",
            )
        )
    if not inv.pairs and images:
        issues.append(
            DiscoveryIssue("no_pairs", str(root), f"no usable training pair under {root}", Severity.ERROR)
        )
    return inv

