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
