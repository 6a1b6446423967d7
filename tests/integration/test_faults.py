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
    from nx47_pipeline.io.volumes import VolumeError, read_volume

    kind, codes = FILE_CASES[case]
    path = corpus.root / corpus.cases[case]["file"]
    with pytest.raises(VolumeError) as info:
        read_volume(path, kind=kind)
    err = info.value
    assert err.code in codes
    assert str(path) in str(err)
    assert err.path == str(path)


def test_label_values_3_and_255_are_both_reported(corpus):
    from nx47_pipeline.io.volumes import VolumeError, read_volume

    with pytest.raises(VolumeError) as info:
        read_volume(corpus.root / corpus.cases["label_values_3_255"]["file"], kind="label")
    assert "3" in info.value.problem and "255" in info.value.problem


def test_shape_mismatch_names_the_label_before_decoding(corpus):
    from nx47_pipeline.io.volumes import VolumeError, read_pair

    vid = corpus.cases["shape_mismatch"]["id"]
    with pytest.raises(VolumeError) as info:
        read_pair(corpus.root / "train_images" / f"{vid}.tif",
                  corpus.root / "train_labels" / f"{vid}.tif")
    assert info.value.code == "shape_mismatch"
    assert f"train_labels/{vid}.tif" in str(info.value).replace("\\", "/")


def test_valid_pairs_read_under_the_non_ascii_path(corpus):
    from nx47_pipeline.io.volumes import read_pair

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
    from nx47_pipeline.data.discovery import discover

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
    from nx47_pipeline.data.discovery import discover

    for d in ("train_images", "train_labels", "test_images"):
        (tmp_path / "empty root ü" / d).mkdir(parents=True)
    inv = discover(tmp_path / "empty root ü")
    assert inv.pairs == [] and inv.test == []


# ----------------------------------------------------------------------
# run level: one tiny run of the nx47 command over the whole corpus
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run out ü") / "out"
    proc = run_cli(
        corpus.root, out, "--no-unet", "--max-train-volumes", "0", "--max-val-volumes", "2",
        "--budget-s", "900", timeout=400,
    )
    return proc, out, journal_dicts(out)


def test_run_over_the_corpus_exits_0(corpus_run):
    proc, out, events = corpus_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = [e for e in events if e["kind"] == "EXEC_COMPLETE"]
    assert done and done[-1]["payload"]["status"] == "ok"


def test_run_over_the_corpus_writes_a_full_submission(corpus, corpus_run):
    proc, out, _ = corpus_run
    sub = out / "submission.zip"
    assert sub.is_file(), proc.stderr[-3000:]
    with zipfile.ZipFile(sub) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(f"{t}.tif" for t in corpus.test_ids)
        for name in zf.namelist():
            with zf.open(name) as fh:
                mask = tifffile.imread(fh)
            assert mask.shape == corpus.shape and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("case", sorted(c for c, e in CASES.items() if e != "accept"))
def test_run_names_every_bad_case_in_a_warning_or_error(corpus, corpus_run, case):
    _, _, events = corpus_run
    c = corpus.cases[case]
    needle = c["id"] or Path(c["file"]).name
    hits = [e for e in messages(events) if names_subject(e, needle)]
    assert hits, f"{case}: no WARNING/ERROR event names {needle!r} ({c['note']})"


def test_run_never_trains_on_unusable_pairs(corpus, corpus_run):
    _, _, events = corpus_run
    audits = [e for e in events if e["kind"] == "COVERAGE_AUDIT"]
    assert audits
    used = set(audits[-1]["payload"]["train_ids"]) | set(audits[-1]["payload"]["val_ids"])
    assert used, "no training pair selected"
    assert not used & corpus.bad_ids()
    # every valid pair is usable: with max_train_volumes=0 all of them are offered
    assert set(corpus.valid_train_ids) <= used


def test_journal_of_the_corpus_run_verifies(corpus_run):
    from nx47_pipeline.telemetry.journal import verify_journal

    _, out, _ = corpus_run
    res = verify_journal(out / "journal.jsonl")
    assert res.ok and not res.torn_tail, res.reason
