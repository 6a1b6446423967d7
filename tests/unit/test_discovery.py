"""Discovery on a Kaggle-shaped tree: pairs, test files, every oddity named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nx47_pipeline.data import discovery
from nx47_pipeline.data.discovery import (
    KAGGLE_ROOTS,
    default_demo_root,
    discover,
    resolve_data_root,
)
from nx47_pipeline.io.volumes import write_volume


def _subjects(inv, code):
    return [i.subject for i in inv.issues_with(code)]


def test_pairs_test_and_scrolls(kaggle_tree):
    t = kaggle_tree
    inv = discover(t.root)
    assert inv.pair_ids == t.pair_ids  # numeric order, orphans left out
    assert inv.test_ids == t.test_ids
    for rec in inv.pairs:
        assert rec.image_path == t.root / "train_images" / f"{rec.id}.tif"
        assert rec.label_path == t.root / "train_labels" / f"{rec.id}.tif"
        assert rec.scroll_id == t.scroll_of[rec.id]
        assert rec.split == "train"
    shapes = {r.id: r.shape for r in inv.pairs}
    assert shapes["26894125"] == (10, 12, 12) and shapes["1407735"] == (8, 12, 12)
    (test,) = inv.test
    assert test.label_path is None and test.scroll_id == "26002" and test.split == "test"
    assert inv.errors == []


def test_deprecated_folders_are_ignored(kaggle_tree):
    inv = discover(kaggle_tree.root)
    every_id = set(inv.pair_ids) | set(inv.test_ids) | {i.subject for i in inv.issues}
    assert not set(kaggle_tree.deprecated_ids) & every_id
    assert {p.name for p in inv.ignored_dirs} == {
        "deprecated_train_images", "deprecated_train_labels"
    }


def test_every_orphan_is_a_warning_that_names_it(kaggle_tree):
    t = kaggle_tree
    inv = discover(t.root)
    assert _subjects(inv, "orphan_image") == t.orphan_images
    assert _subjects(inv, "orphan_label") == t.orphan_labels
    assert _subjects(inv, "csv_ghost") == t.ghost_ids + t.test_ghost_ids
    malformed = _subjects(inv, "csv_malformed")
    assert malformed == [f"train.csv:{n}" for n in t.malformed_lines]
    assert "'12345'" in inv.issues_with("csv_malformed")[0].message
    for issue in inv.issues:
        assert issue.level == "warning"
        if issue.code.startswith(("orphan", "csv_ghost")):
            assert issue.subject in issue.message
    stray = sorted(_subjects(inv, "stray_file"))
    assert stray == sorted(str(p) for p in t.stray_files)  # the hidden temp file is skipped


def test_bad_files_are_left_out_and_named(kaggle_tree):
    t = kaggle_tree
    img_dir, lab_dir = t.root / "train_images", t.root / "train_labels"
    # truncated image, 2D label, uint16 image, shape mismatch, not-a-TIFF test
    data = (img_dir / "1407735.tif").read_bytes()
    (img_dir / "1407735.tif").write_bytes(data[: len(data) // 2])
    import tifffile

    tifffile.imwrite(lab_dir / "2290837.tif", np.zeros((12, 12), np.uint8))
    tifffile.imwrite(img_dir / "26894125.tif", np.zeros((10, 12, 12), np.uint16),
                     photometric="minisblack")
    write_volume(lab_dir / "327851.tif", np.zeros((8, 12, 13), np.uint8))
    (t.root / "test_images" / "1407735.tif").write_bytes(b"GIF89a not a tiff")
    seen = []
    inv = discover(t.root, on_progress=lambda d, n, w: seen.append((d, n)))
    assert inv.pair_ids == ["99887766"]
    assert inv.test_ids == []
    errs = {(i.code, Path(i.subject).name, Path(i.subject).parent.name) for i in inv.errors}
    assert errs == {
        ("corrupt", "1407735.tif", "train_images"),
        ("not_3d", "2290837.tif", "train_labels"),
        ("dtype", "26894125.tif", "train_images"),
        ("shape_mismatch", "327851.tif", "train_labels"),
        ("not_tiff", "1407735.tif", "test_images"),
    }
    for issue in inv.errors:
        assert issue.subject in issue.message
    assert seen[-1] == (11, 11) and [d for d, _ in seen] == list(range(1, 12))


def test_duplicates_tif_and_tiff_and_csv(kaggle_tree):
    t = kaggle_tree
    write_volume(t.root / "train_images" / "1407735.tiff", np.zeros((8, 12, 12), np.uint8))
    with open(t.root / "train.csv", "a") as fh:
        fh.write("2290837,99999\n")
    inv = discover(t.root)
    assert {r.id: r.image_path.name for r in inv.pairs}["1407735"] == "1407735.tif"
    dup = inv.issues_with("duplicate_id")
    assert [d.subject for d in dup] == ["1407735"] and "1407735.tiff" in dup[0].message
    csv_dup = inv.issues_with("csv_duplicate")
    assert [d.subject for d in csv_dup] == ["2290837"]
    assert {r.id: r.scroll_id for r in inv.pairs}["2290837"] == "34117"  # first row wins


def test_without_csv_and_without_headers(kaggle_tree):
    t = kaggle_tree
    (t.root / "train.csv").unlink()
    (t.root / "test.csv").unlink()
    inv = discover(t.root, read_headers=False)
    assert inv.pair_ids == t.pair_ids
    assert all(r.scroll_id is None and r.shape is None for r in inv.pairs)
    assert not inv.issues_with("csv_ghost") and not inv.issues_with("not_in_csv")


def test_file_not_in_csv_and_headerless_csv(kaggle_tree):
    t = kaggle_tree
    (t.root / "train.csv").write_text("1407735,26002\n2290837,34117\n")
    inv = discover(t.root)
    assert [i.code for i in inv.issues if i.subject == str(t.root / "train.csv")] == ["csv_header"]
    scrolls = {r.id: r.scroll_id for r in inv.pairs}
    assert scrolls["1407735"] == "26002" and scrolls["327851"] is None
    assert "327851" in _subjects(inv, "not_in_csv")


def test_discover_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    inv = discover(empty)
    assert inv.pairs == [] and {i.code for i in inv.issues} == {"missing_dir"}


def test_demo_dataset_discovers_cleanly(demo_root):
    inv = discover(demo_root)
    assert len(inv.pairs) == 6 and len(inv.test) == 2
    assert {i.code for i in inv.issues} == {"csv_ghost"}  # the two ghost rows only
    assert len({r.scroll_id for r in inv.pairs}) == 3
    assert all(r.shape == (40, 40, 40) for r in inv.pairs + inv.test)


def test_resolve_data_root(tmp_path, monkeypatch):
    assert KAGGLE_ROOTS == (
        "/kaggle/input/vesuvius-challenge-surface-detection",
        "/kaggle/input/competitions/vesuvius-challenge-surface-detection",
    )
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        resolve_data_root(tmp_path / "missing-dir")
    assert resolve_data_root(str(tmp_path)) == tmp_path
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve_data_root(f)

    monkeypatch.setenv("NX47_DEMO_ROOT", str(tmp_path / "demo"))
    assert default_demo_root() == tmp_path / "demo"
    # no Kaggle mount, no demo yet, generation refused -> a clear error
    kaggle_a, kaggle_b = tmp_path / "k1", tmp_path / "k2"
    monkeypatch.setattr(discovery, "KAGGLE_ROOTS", (str(kaggle_a), str(kaggle_b)))
    with pytest.raises(FileNotFoundError, match="demo-data"):
        resolve_data_root("auto")
    with pytest.raises(FileNotFoundError, match="demo-data"):
        resolve_data_root("demo")
    assert not (tmp_path / "demo").exists()  # resolving never generates
    # the demo root is used once it holds train.csv
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "train.csv").write_text("id,scroll_id\n")
    assert resolve_data_root("auto") == tmp_path / "demo"
    # the second Kaggle root, then the first, win over the demo
    kaggle_b.mkdir()
    assert resolve_data_root("auto") == kaggle_b
    kaggle_a.mkdir()
    assert resolve_data_root("auto") == kaggle_a


def test_default_demo_root_is_in_repo(monkeypatch):
    monkeypatch.delenv("NX47_DEMO_ROOT", raising=False)
    root = default_demo_root()
    assert root.name == "demo_data"
    assert (root.parent / "nx47_pipeline" / "data" / "discovery.py").is_file()
