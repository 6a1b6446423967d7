"""A Kaggle-shaped data root full of the faults real runs meet.

:func:`build_bad_corpus` writes, under a folder whose path contains spaces and
non-ASCII letters, a data root in the competition layout (``train.csv``,
``test.csv``, ``train_images/``, ``train_labels/``, ``test_images/``,
``deprecated_*``) holding a few valid image/label pairs and valid test images
plus one instance of every bad case listed in ``docs/faults.md``.  It returns
a description saying which id or file each case concerns, so a test can check
that the run names it in a WARNING or ERROR event and still completes over the
valid rest.

The volumes are tiny synthetic "scroll chunks" (a few wavy bright sheets in
noise, the labelled surface one voxel off each sheet's ridge, label 2 on a
3-voxel border) written as uint8 multi-page LZW TIFF like the real data.

The second half of the module holds helpers to start the ``nx47`` command in
a subprocess with tiny settings (:data:`TINY_ENV`) and to read the events of
its ``journal.jsonl``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import tifffile

from waits import wait_until

#: Folder name of the data root inside the ``root`` passed to build_bad_corpus.
ROOT_NAME = "données brutes ü/Vesuvius run ñ 47"

#: Every bad case the corpus contains, with what a run must do about it.
#: ``skip``: the id is left out of training / validation (ERROR or WARNING);
#: ``warn``: the run goes on but says so (WARNING); ``accept``: must be read.
CASES: dict[str, str] = {
    "truncated_tiff": "skip",
    "text_as_tif": "skip",
    "tiff_2d": "skip",
    "uint16_volume": "warn",
    "float_volume": "warn",
    "shape_mismatch": "skip",
    "label_values_3_255": "warn",
    "image_without_label": "skip",
    "label_without_image": "warn",
    "label_all_ignore": "warn",
    "empty_folder": "warn",
    "stray_file": "warn",
    "malformed_csv_row": "warn",
    "duplicate_id": "warn",
    "non_ascii_space_path": "accept",
}


@dataclass
class Corpus:
    """What :func:`build_bad_corpus` wrote (also usable as a dict)."""

    root: Path
    shape: tuple[int, int, int]
    valid_train_ids: list[str]
    test_ids: list[str]
    #: case name -> {"id": str | None, "file": relative path | None,
    #: "expect": one of skip / warn / accept, "note": str}
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def bad_ids(self) -> set[str]:
        """Ids whose train data are unusable (must not be trained on)."""
        return {
            c["id"] for c in self.cases.values() if c["expect"] == "skip" and c["id"]
        }

    def subjects(self, case: str) -> list[str]:
        """Strings of which one must appear in the event naming ``case``."""
        c = self.cases[case]
        out = []
        if c.get("id"):
            out.append(str(c["id"]))
        if c.get("file"):
            out.append(Path(c["file"]).name)
            out.append(str(c["file"]))
        return out


# ----------------------------------------------------------------------
def synthetic_pair(
    shape: tuple[int, int, int], *, seed: int, n_sheets: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """A tiny scroll-like chunk and its label (0 / 1 / 2), both uint8.

    Parameters
    ----------
    shape : tuple of int
        ``(z, y, x)`` size of the volume.
    seed : int
        Seed of the random generator (same seed, same volume).
    n_sheets : int, optional
        Number of wavy sheets stacked along z.
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz = np.arange(z, dtype=np.float32)[:, None, None]
    yy, xx = np.meshgrid(
        np.arange(y, dtype=np.float32), np.arange(x, dtype=np.float32), indexing="ij"
    )
    image = rng.normal(60.0, 12.0, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(n_sheets):
        base = (k + 1) * z / (n_sheets + 1)
        amp = rng.uniform(1.0, 3.0)
        fy, fx = rng.uniform(0.08, 0.2, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        centre = base + amp * np.sin(fy * yy + ph) * np.cos(fx * xx)
        dist = zz - centre[None]
        image += 110.0 * np.exp(-(dist**2) / (2 * 1.5**2))
        label[np.abs(dist - 1.0) <= 1.0] = 1
    image = np.clip(image, 0, 255).astype(np.uint8)
    b = 3
    label[:b] = 2
    label[-b:] = 2
    label[:, :b] = 2
    label[:, -b:] = 2
    label[:, :, :b] = 2
    label[:, :, -b:] = 2
    return image, label


def write_tif(path: Path, volume: np.ndarray) -> None:
    """Write ``volume`` as a multi-page LZW TIFF (the competition format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, volume, compression="lzw")


def build_bad_corpus(
    root: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (32, 32, 32),
    n_valid_train: int = 6,
    n_test: int = 2,
    seed: int = 8,
) -> Corpus:
    """Write a Kaggle-shaped data root with valid data plus every bad case.

    Parameters
    ----------
    root : path-like
        Existing folder; the data root is created at ``root / ROOT_NAME``
        (a path with spaces and non-ASCII letters).
    shape : tuple of int, optional
        Shape of every valid volume.
    n_valid_train : int, optional
        Number of valid train image/label pairs (at least 4).
    n_test : int, optional
        Number of (valid) test images.
    seed : int, optional
        Seed for the synthetic volumes.

    Returns
    -------
    Corpus
        The data root, the valid train and test ids, and for each name of
        :data:`CASES` the id and/or file (relative to the data root) it
        concerns and what a run must do about it.
    """
    if n_valid_train < 4:
        raise ValueError(f"n_valid_train must be >= 4, got {n_valid_train!r}")
    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test!r}")
    data = Path(root) / ROOT_NAME
    if data.exists() and any(data.iterdir()):
        raise FileExistsError(f"build_bad_corpus: {data} exists and is not empty")
    ti, tl, te = data / "train_images", data / "train_labels", data / "test_images"
    for d in (ti, tl, te, data / "deprecated_train_images", data / "deprecated_train_labels"):
        d.mkdir(parents=True, exist_ok=True)

    scrolls = ["26002", "34117", "35360"]
    rows: list[tuple[str, str]] = []
    cases: dict[str, dict[str, Any]] = {}
    sid = 1000100

    def new_id() -> str:
        nonlocal sid
        sid += 7
        return str(sid)

    def case(name: str, *, id_: str | None, file: str | None, note: str) -> None:
        cases[name] = {"id": id_, "file": file, "expect": CASES[name], "note": note}

    # --- valid train pairs ------------------------------------------------
    valid: list[str] = []
    for i in range(n_valid_train):
        vid = new_id()
        img, lab = synthetic_pair(shape, seed=seed * 1000 + i)
        write_tif(ti / f"{vid}.tif", img)
        write_tif(tl / f"{vid}.tif", lab)
        rows.append((vid, scrolls[i % len(scrolls)]))
        valid.append(vid)

    def pair(i: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_pair(shape, seed=seed * 1000 + 500 + i)

    # --- bad train cases --------------------------------------------------
    vid = new_id()
    img, lab = pair(0)
    write_tif(ti / f"{vid}.tif", img)
    write_tif(tl / f"{vid}.tif", lab)
    raw = (ti / f"{vid}.tif").read_bytes()
    (ti / f"{vid}.tif").write_bytes(raw[: len(raw) // 2])
    rows.append((vid, "26002"))
    case("truncated_tiff", id_=vid, file=f"train_images/{vid}.tif",
         note="image file cut in half")

    vid = new_id()
    (ti / f"{vid}.tif").write_text("this is not a TIFF, it is a text file\n")
    write_tif(tl / f"{vid}.tif", pair(1)[1])
    rows.append((vid, "26002"))
    case("text_as_tif", id_=vid, file=f"train_images/{vid}.tif",
         note="a text file named .tif")

    vid = new_id()
    img, lab = pair(2)
    write_tif(ti / f"{vid}.tif", img[shape[0] // 2])
    write_tif(tl / f"{vid}.tif", lab[shape[0] // 2])
    rows.append((vid, "34117"))
    case("tiff_2d", id_=vid, file=f"train_images/{vid}.tif", note="2D image and label")

    vid = new_id()
    img, lab = pair(3)
    write_tif(ti / f"{vid}.tif", img.astype(np.uint16) * 257)
    write_tif(tl / f"{vid}.tif", lab)
    rows.append((vid, "34117"))
    case("uint16_volume", id_=vid, file=f"train_images/{vid}.tif",
         note="uint16 image (0..65535)")

    vid = new_id()
    img, lab = pair(4)
    write_tif(ti / f"{vid}.tif", img.astype(np.float32) / 255.0)
    write_tif(tl / f"{vid}.tif", lab)
    rows.append((vid, "35360"))
    case("float_volume", id_=vid, file=f"train_images/{vid}.tif",
         note="float32 image in [0, 1]")

    vid = new_id()
    img, lab = pair(5)
    write_tif(ti / f"{vid}.tif", img)
    write_tif(tl / f"{vid}.tif", np.pad(lab, ((0, 0), (0, 0), (0, 4)), constant_values=2))
    rows.append((vid, "35360"))
    case("shape_mismatch", id_=vid, file=f"train_labels/{vid}.tif",
         note=f"image {shape}, label {shape[:2] + (shape[2] + 4,)}")

    vid = new_id()
    img, lab = pair(6)
    lab = lab.copy()
    lab[shape[0] // 2, 4:8, 4:8] = 3
    lab[shape[0] // 2, 10:14, 10:14] = 255
    write_tif(ti / f"{vid}.tif", img)
    write_tif(tl / f"{vid}.tif", lab)
    rows.append((vid, "26002"))
    case("label_values_3_255", id_=vid, file=f"train_labels/{vid}.tif",
         note="label holds values 3 and 255 besides 0/1/2")

    vid = new_id()
    write_tif(ti / f"{vid}.tif", pair(7)[0])
    rows.append((vid, "34117"))
    case("image_without_label", id_=vid, file=f"train_images/{vid}.tif",
         note="train image with no label file")

    vid = new_id()
    write_tif(tl / f"{vid}.tif", pair(8)[1])
    rows.append((vid, "34117"))
    case("label_without_image", id_=vid, file=f"train_labels/{vid}.tif",
         note="train label with no image file")

    vid = new_id()
    img, _ = pair(9)
    write_tif(ti / f"{vid}.tif", img)
    write_tif(tl / f"{vid}.tif", np.full(shape, 2, dtype=np.uint8))
    rows.append((vid, "35360"))
    case("label_all_ignore", id_=vid, file=f"train_labels/{vid}.tif",
         note="label is 2 (ignore) everywhere: nothing to learn from")

    (ti / "scratch").mkdir()
    case("empty_folder", id_=None, file="train_images/scratch",
         note="empty sub-folder in train_images (and empty deprecated_* folders)")

    (ti / "notes.txt").write_text("stray file left by a user\n")
    case("stray_file", id_=None, file="train_images/notes.txt",
         note="a non-TIFF file in train_images")

    # --- test images --------------------------------------------------------
    test_ids = []
    test_rows = []
    for i in range(n_test):
        tid = new_id()
        write_tif(te / f"{tid}.tif", synthetic_pair(shape, seed=seed * 1000 + 900 + i)[0])
        test_ids.append(tid)
        test_rows.append((tid, scrolls[i % len(scrolls)]))

    # --- csv faults -----------------------------------------------------------
    with open(data / "train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "scroll_id"])
        for r in rows[:3]:
            w.writerow(r)
        fh.write("not-an-id;;oops,x,y\n")
        for r in rows[3:]:
            w.writerow(r)
        w.writerow(rows[1])  # duplicate of a valid id
    case("malformed_csv_row", id_=None, file="train.csv",
         note="line 5 is 'not-an-id;;oops,x,y'")
    case("duplicate_id", id_=rows[1][0], file="train.csv",
         note=f"id {rows[1][0]} listed twice in train.csv")
    with open(data / "test.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "scroll_id"])
        for r in test_rows:
            w.writerow(r)
    case("non_ascii_space_path", id_=None, file=None,
         note=f"the data root itself: {data}")

    return Corpus(root=data, shape=tuple(shape), valid_train_ids=valid,
                  test_ids=test_ids, cases=cases)


def build_clean_root(
    root: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (32, 32, 32),
    n_train: int = 6,
    n_test: int = 2,
    seed: int = 3,
) -> tuple[Path, list[str], list[str]]:
    """Write a valid Kaggle-shaped data root (no faults) at ``root``.

    Returns
    -------
    (data_root, train_ids, test_ids)
    """
    data = Path(root)
    ti, tl, te = data / "train_images", data / "train_labels", data / "test_images"
    scrolls = ["26002", "34117", "35360"]
    train_ids = [str(2000000 + 11 * i) for i in range(n_train)]
    test_ids = [str(3000000 + 13 * i) for i in range(n_test)]
    for i, vid in enumerate(train_ids):
        img, lab = synthetic_pair(shape, seed=seed * 1000 + i)
        write_tif(ti / f"{vid}.tif", img)
        write_tif(tl / f"{vid}.tif", lab)
    for i, vid in enumerate(test_ids):
        write_tif(te / f"{vid}.tif", synthetic_pair(shape, seed=seed * 1000 + 700 + i)[0])
    for name, ids in (("train.csv", train_ids), ("test.csv", test_ids)):
        with open(data / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "scroll_id"])
            for i, vid in enumerate(ids):
                w.writerow([vid, scrolls[i % len(scrolls)]])
    return data, train_ids, test_ids


# ----------------------------------------------------------------------
# Running the nx47 command and reading its journal (shared by the fault,
# kill/resume and security tests).
# ----------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]

#: Environment that keeps a run on 32^3 volumes to seconds on two cores.
TINY_ENV = {
    "NX47_FIT_MAX_ITER": "40",
    "NX47_SEARCH_MAX_ITER": "20",
    "NX47_SAMPLES_PER_CLASS": "1500",
    "NX47_FEATURE_SCALES": "1.0,2.0",
    "NX47_L1_GRID": "1e-3",
    "NX47_L2_GRID": "1e-2",
    "NX47_THRESHOLD_GRID": "0.4,0.6",
    "NX47_MIN_COMPONENT_VOXELS": "10",
    "NX47_HEARTBEAT_INTERVAL_S": "1",
    "NX47_CONSOLE_INTERVAL_S": "1",
    "NX47_PREVIEW_SLICES": "1",
    "NX47_UNET_EPOCHS": "1",
    "NX47_UNET_PATCH": "16",
    "NX47_UNET_BATCH": "2",
    "NX47_UNET_WIDTH": "4",
    "NX47_UNET_DEPTH": "2",
    "NX47_UNET_DEVICE": "cpu",
}


def cli_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "nx47_pipeline.cli", "run",
        "--data", str(data), "--out", str(out), *extra,
    ]


def run_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NX47_", "V138_"))}
    env.update(TINY_ENV)
    env.update(more)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(data: Path, out: Path, *extra: str, timeout: float = 300, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(data, out, *extra), cwd=cwd or REPO, env=env or run_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def journal_dicts(out: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``out/journal.jsonl`` as a flat event dict
    (``kind``, ``stage``, ``payload``, ``ts`` ...); a torn last line is skipped."""
    path = Path(out) / "journal.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "event" in d and isinstance(d["event"], dict):
            d = {**d["event"], **{k: v for k, v in d.items() if k != "event"}}
        if isinstance(d, dict) and "kind" in d:
            events.append(d)
    return events


def messages(events: Iterable[dict[str, Any]], kinds=("WARNING", "ERROR")) -> list[dict[str, Any]]:
    return [e for e in events if e.get("kind") in kinds]


def names_subject(event: dict[str, Any], needle: str) -> bool:
    p = event.get("payload") or {}
    hay = " ".join(str(p.get(k, "")) for k in ("subject", "message", "code"))
    hay += " " + json.dumps(p.get("extra", {}), ensure_ascii=False)
    return needle in hay


def step_begins(events: Iterable[dict[str, Any]]) -> list[str]:
    return [
        e.get("stage", "") for e in events
        if e.get("kind") == "STEP" and (e.get("payload") or {}).get("phase") == "begin"
    ]


def read_masks(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(Path(folder).glob("*.tif")):
        if p.stem.endswith("_prob"):
            continue
        out[p.stem] = tifffile.imread(p)
    return out


def wait_for(pred, timeout: float, interval: float = 0.02) -> bool:
    """True as soon as ``pred()`` holds, False if it still does not after ``timeout``."""
    try:
        return bool(wait_until(pred, timeout, interval_s=interval))
    except AssertionError:
        return bool(pred())


if __name__ == "__main__":  # pragma: no cover - manual inspection
    import sys
    import tempfile

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    c = build_bad_corpus(out)
    print(c.root)
    for k, v in c.cases.items():
        print(f"{k:22s} {v}")
