"""The fault suite: bad input never sinks a run.

Over the corpus of :mod:`fault_corpus` (truncated TIFF, a text file named
``.tif``, 2D, uint16 and float volumes, shape mismatch, label values 3 and
255, image without label and label without image, a label that is all 2,
empty folders, a stray file, a malformed csv row, a duplicate id, a data root
whose path has spaces and non-ASCII letters):

- data level (fast): the readers and discovery name the file or id at fault
  and keep the valid rest;
- run level (fast, one tiny run): the ``nx47`` command exits 0 with a full
  submission, and its journal holds a WARNING or ERROR naming every bad id
  or file.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_corpus import (  # noqa: E402
    CASES,
    build_bad_corpus,
    journal_dicts,
    messages,
    names_subject,
    run_cli,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_bad_corpus(tmp_path_factory.mktemp("faults"))


def test_corpus_has_every_case_under_an_awkward_path(corpus):
    assert set(corpus.cases) == set(CASES)
    assert " " in str(corpus.root) and not str(corpus.root).isascii()
    for name, c in corpus.cases.items():
        if c["file"]:
            assert (corpus.root / c["file"]).exists(), name


# ----------------------------------------------------------------------
# data level: volume_io
# ----------------------------------------------------------------------
FILE_CASES = {
    # case: (function, code the reader must give)
    "truncated_tiff": ("image", {"corrupt"}),
    "text_as_tif": ("image", {"not_tiff"}),
    "tiff_2d": ("image", {"not_3d"}),
    "uint16_volume": ("image", {"dtype"}),
    "float_volume": ("image", {"dtype"}),
    "label_values_3_255": ("label", {"label_values"}),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_reader_names_the_bad_file(corpus, case):
    from nx47_pipeline.volume_io import VolumeError, read_volume

    kind, codes = FILE_CASES[case]
    path = corpus.root / corpus.cases[case]["file"]
    with pytest.raises(VolumeError) as info:
        read_volume(path, kind=kind)
    err = info.value
    assert err.code in codes
    assert str(path) in str(err)
    assert err.path == str(path)


def test_label_values_3_and_255_are_both_reported(corpus):
    from nx47_pipeline.volume_io import VolumeError, read_volume

    with pytest.raises(VolumeError) as info:
        read_volume(corpus.root / corpus.cases["label_values_3_255"]["file"], kind="label")
    assert "3" in info.value.problem and "255" in info.value.problem


def test_shape_mismatch_names_the_label_before_decoding(corpus):
    from nx47_pipeline.volume_io import VolumeError, read_pair

    vid = corpus.cases["shape_mismatch"]["id"]
    with pytest.raises(VolumeError) as info:
        read_pair(corpus.root / "train_images" / f"{vid}.tif",
                  corpus.root / "train_labels" / f"{vid}.tif")
    assert info.value.code == "shape_mismatch"
    assert f"train_labels/{vid}.tif" in str(info.value).replace("\\", "/")


def test_valid_pairs_read_under_the_non_ascii_path(corpus):
    from nx47_pipeline.volume_io import read_pair

    for vid in corpus.valid_train_ids:
        img, lab = read_pair(corpus.root / "train_images" / f"{vid}.tif",
                             corpus.root / "train_labels" / f"{vid}.tif")
        assert img.shape == lab.shape == corpus.shape
        assert img.dtype == lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 1, 2}


# ----------------------------------------------------------------------
# data level: discovery
# ----------------------------------------------------------------------
#: case -> codes discovery may report for it (None: found only when read).
DISCOVERY_CODES = {
    "truncated_tiff": {"corrupt"},
    "text_as_tif": {"not_tiff"},
    "tiff_2d": {"not_3d"},
    "uint16_volume": {"dtype"},
    "float_volume": {"dtype"},
    "shape_mismatch": {"shape_mismatch"},
    "image_without_label": {"orphan_image"},
    "label_without_image": {"orphan_label"},
    "empty_folder": {"stray_file"},
    "stray_file": {"stray_file"},
    "malformed_csv_row": {"csv_malformed"},
    "duplicate_id": {"csv_duplicate"},
}


@pytest.fixture(scope="module")
def inventory(corpus):
    from nx47_pipeline.discovery import discover

    return discover(corpus.root)


def _issue_names(issue, needle: str) -> bool:
    return needle in issue.subject or needle in issue.message


@pytest.mark.parametrize("case", sorted(DISCOVERY_CODES))
def test_discovery_reports_each_case_naming_it(corpus, inventory, case):
    c = corpus.cases[case]
    needle = c["id"] or Path(c["file"]).name
    hits = [i for i in inventory.issues if i.code in DISCOVERY_CODES[case] and _issue_names(i, needle)]
    assert hits, f"{case}: no issue with code {DISCOVERY_CODES[case]} naming {needle!r}"
    assert all(i.level in ("warning", "error") for i in hits)


def test_discovery_keeps_the_valid_rest(corpus, inventory):
    pairs = set(inventory.pair_ids)
    assert set(corpus.valid_train_ids) <= pairs
    assert not pairs & corpus.bad_ids(), "an unusable pair was kept for training"
    assert inventory.test_ids == sorted(corpus.test_ids)
    for rec in inventory.pairs:
        assert rec.shape == corpus.shape
    # the deprecated folders are seen and skipped, never taken as data
    assert {p.name for p in inventory.ignored_dirs} == {
        "deprecated_train_images", "deprecated_train_labels"
    }


def test_discovery_of_empty_folders_finds_nothing_without_crashing(tmp_path):
    from nx47_pipeline.discovery import discover

    for d in ("train_images", "train_labels", "test_images"):
        (tmp_path / "empty root ü" / d).mkdir(parents=True)
    inv = discover(tmp_path / "empty root ü")
    assert inv.pairs == [] and inv.test == []
