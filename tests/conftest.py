"""Shared fixtures: a tiny generated demo dataset and a Kaggle-shaped tree.

``demo_root`` (session): 6 train volumes of 40³ over 3 scrolls + 2 test
volumes, generated once per test session.

``kaggle_tree`` (function): a tree shaped like the Kaggle mount with every
oddity discovery must report; it returns a :class:`KaggleTree` that lists
what is where, so tests can assert against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.io.volumes import write_volume

DEMO_N_TRAIN = 6
DEMO_N_TEST = 2
DEMO_SHAPE = 40
DEMO_SEED = 5


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A tiny demo dataset (6 train 40³ volumes, 3 scrolls, 2 test)."""
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(
        root, n_train=DEMO_N_TRAIN, n_test=DEMO_N_TEST, shape=DEMO_SHAPE, seed=DEMO_SEED
    )
    return root


@dataclass
class KaggleTree:
    """What :func:`kaggle_tree` wrote (ids are strings)."""

    root: Path
    pair_ids: list[str]  # usable pairs
    scroll_of: dict[str, str]
    test_ids: list[str]
    orphan_images: list[str]
    orphan_labels: list[str]
    ghost_ids: list[str]  # train.csv rows without files
    test_ghost_ids: list[str]  # test.csv rows without files
    malformed_lines: list[int]  # 1-based line numbers in train.csv
    deprecated_ids: list[str]
    stray_files: list[Path]


def _img(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _lab(shape, seed):
    return np.random.default_rng(seed).integers(0, 3, shape, dtype=np.uint8)


@pytest.fixture
def kaggle_tree(tmp_path) -> KaggleTree:
    """A Kaggle-shaped data root with deprecated folders, orphans, ghost and
    malformed csv rows, a stray .txt, and small valid pairs of two shapes."""
    root = tmp_path / "vesuvius-challenge-surface-detection"
    shapes = {"1407735": (8, 12, 12), "2290837": (8, 12, 12), "26894125": (10, 12, 12),
              "327851": (8, 12, 12), "99887766": (8, 12, 12)}
    scroll_of = {"1407735": "26002", "2290837": "34117", "26894125": "34117",
                 "327851": "35360", "99887766": "35360"}
    for i, (vid, shp) in enumerate(shapes.items()):
        write_volume(root / "train_images" / f"{vid}.tif", _img(shp, i))
        write_volume(root / "train_labels" / f"{vid}.tif", _lab(shp, 100 + i))
    # orphans
    write_volume(root / "train_images" / "5550001.tif", _img((8, 12, 12), 7))
    write_volume(root / "train_labels" / "5550002.tif", _lab((8, 12, 12), 8))
    # test
    write_volume(root / "test_images" / "1407735.tif", _img((8, 12, 12), 0))
    # deprecated folders: same ids as real pairs would be a trap; labels {0,1}
    for i, vid in enumerate(["7000001", "7000002"]):
        write_volume(root / "deprecated_train_images" / f"{vid}.tif", _img((8, 12, 12), 20 + i))
        write_volume(
            root / "deprecated_train_labels" / f"{vid}.tif",
            (_lab((8, 12, 12), 30 + i) == 1).astype(np.uint8),
        )
    # stray non-TIFF files
    stray = [root / "train_images" / "notes.txt", root / "train_labels" / "Thumbs.db"]
    for p in stray:
        p.write_text("not a volume\n")
    (root / "train_images" / ".hidden.tif.tmp").write_text("in-flight temporary\n")
    # csvs: ghost rows, malformed rows, an orphan listed, a file not listed
    train_rows = [
        "id,scroll_id",
        "1407735,26002",
        "2290837,34117",
        "26894125,34117",
        "327851,35360",
        "99887766,35360",
        "5550001,26010",  # orphan image
        "4040404,26010",  # ghost
        "8080808,44430",  # ghost
        "12345",  # malformed: one field (line 10)
        "abc/def,26002",  # malformed: not a plain id (line 11)
        "",
        "5550002,26010",  # orphan label
    ]
    (root / "train.csv").write_text("\n".join(train_rows) + "\n")
    (root / "test.csv").write_text("id,scroll_id\n1407735,26002\n3030303,26002\n")
    return KaggleTree(
        root=root,
        pair_ids=sorted(shapes, key=int),
        scroll_of=scroll_of,
        test_ids=["1407735"],
        orphan_images=["5550001"],
        orphan_labels=["5550002"],
        ghost_ids=["4040404", "8080808"],
        test_ghost_ids=["3030303"],
        malformed_lines=[10, 11],
        deprecated_ids=["7000001", "7000002"],
        stray_files=stray,
    )
