"""Demo dataset: layout, label rules, scroll styles, determinism, arguments."""

from __future__ import annotations

import collections
import csv
import hashlib
import os

import numpy as np
import pytest
from scipy import ndimage as ndi

from nx47_pipeline.data.demo import (
    ensure_demo_dataset,
    generate_demo_dataset,
    make_volume,
    parse_counts,
    parse_shape,
)
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.volumes import read_header, read_volume


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _digest_tree(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_csvs(demo_root):
    rows = _rows(demo_root / "train.csv")
    assert rows[0] == ["id", "scroll_id"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == 6 + 2  # 6 pairs and 2 ghost rows without files
    assert all(i.isdigit() and 6 <= len(i) <= 10 for i in ids)
    on_disk = {p.stem for p in (demo_root / "train_images").glob("*.tif")}
    assert on_disk == {p.stem for p in (demo_root / "train_labels").glob("*.tif")}
    assert len(on_disk) == 6 and len(set(ids) - on_disk) == 2
    assert len({r[1] for r in rows[1:] if r[0] in on_disk}) >= 3  # at least 3 scrolls
    test_rows = _rows(demo_root / "test.csv")
    test_ids = {r[0] for r in test_rows[1:]}
    assert test_ids == {p.stem for p in (demo_root / "test_images").glob("*.tif")}
    assert test_ids == {p.stem for p in (demo_root / "test_labels_hidden").glob("*.tif")}
    assert not test_ids & on_disk  # distinct volumes, not copies of train
    for vid in test_ids:
        a = read_volume(demo_root / "test_images" / f"{vid}.tif")
        for tid in on_disk:
            b = read_volume(demo_root / "train_images" / f"{tid}.tif")
            assert not np.array_equal(a, b)
    hdr = read_header(next((demo_root / "train_images").glob("*.tif")))
    assert hdr.compression == "LZW" and hdr.dtype == "uint8" and hdr.shape == (40, 40, 40)


def test_deprecated_labels_are_binary(demo_root):
    labs = sorted((demo_root / "deprecated_train_labels").glob("*.tif"))
    imgs = sorted((demo_root / "deprecated_train_images").glob("*.tif"))
    assert labs and [p.name for p in labs] == [p.name for p in imgs]
    for p in labs:
        assert set(np.unique(read_volume(p, kind="label"))) <= {0, 1}


def test_label_rules(demo_root):
    inv = discover(demo_root)
    for rec in inv.pairs:
        lab = read_volume(rec.label_path, kind="label")
        frac = np.bincount(lab.ravel(), minlength=3) / lab.size
        assert 0.5 <= frac[2] <= 0.7 + 1e-3, rec.id
        assert 0.01 <= frac[1] <= 0.15, rec.id
        # 3-voxel ignore border on every face (first and last z slices too)
        for axis in range(3):
            for idx in (0, 1, 2, -1, -2, -3):
                assert np.all(np.take(lab, idx, axis=axis) == 2)
        # the surface is a thin layer: no voxel deeper than 2 inside it
        inner = ndi.distance_transform_edt(lab == 1)
        assert np.percentile(inner[lab == 1], 99) <= 2.3


def test_surface_sits_off_the_ridge_and_debris_is_unlabelled():
    img, lab = make_volume((64, 64, 64), seed=11)
    core = lab != 2
    fg, bg = img[(lab == 1)], img[(lab == 0)]
    assert fg.mean() > bg.mean() + 10  # the surface is on a sheet ...
    # ... but the brightest voxels (ridge cores, debris) are mostly not label 1
    top = img >= np.percentile(img[core], 99.5)
    assert (lab[top & core] == 1).mean() < 0.5
    # label-1 voxel intensity resembles the real data (mean ~88, std ~48)
    assert 60 <= fg.mean() <= 130 and 20 <= fg.std() <= 60


def test_scrolls_have_their_own_style():
    from nx47_pipeline.data.demo import _scroll_style

    a, b = _scroll_style(47, "34117"), _scroll_style(47, "35360")
    assert a != b and a == _scroll_style(47, "34117")


def test_byte_identical_for_a_seed(tmp_path):
    kw = dict(n_train=3, n_test=1, shape=(24, 28, 32), seed=9)
    seen = []
    generate_demo_dataset(tmp_path / "a", on_progress=lambda d, n, w: seen.append((d, n)), **kw)
    generate_demo_dataset(tmp_path / "b", **kw)
    da, db = _digest_tree(tmp_path / "a"), _digest_tree(tmp_path / "b")
    assert da == db and len(da) >= 3 * 2 + 1 + 1 + 2 * 2 + 2
    assert seen == [(i, 6) for i in range(1, 7)]  # 3 train + 1 test + 2 deprecated
    generate_demo_dataset(tmp_path / "c", **{**kw, "seed": 10})
    dc = _digest_tree(tmp_path / "c")
    assert set(dc.values()).isdisjoint(
        v for k, v in da.items() if k.endswith(".tif") and "deprecated" not in k
    )
    shapes = {read_header(p).shape for p in (tmp_path / "a" / "train_images").glob("*.tif")}
    assert shapes == {(24, 28, 32)}


def test_default_shapes_are_mixed():
    from nx47_pipeline.data.demo import _as_shape

    shapes = [_as_shape(None, i, "train") for i in range(12)]
    assert shapes.count((80, 80, 80)) >= 6
    assert (64, 64, 64) in shapes and (96, 96, 96) in shapes


def test_ensure_demo_dataset_generates_once(tmp_path, monkeypatch):
    import nx47_pipeline.data.demo as demo

    calls = []

    def fake(out, **kw):
        calls.append(out)
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / "train.csv").write_text("id,scroll_id\n")

    monkeypatch.setattr(demo, "generate_demo_dataset", fake)
    assert ensure_demo_dataset(tmp_path / "d") == tmp_path / "d"
    assert ensure_demo_dataset(tmp_path / "d") == tmp_path / "d"
    assert len(calls) == 1


@pytest.mark.parametrize("text, expected", [
    ("80", 80), (" 64,80,80 ", (64, 80, 80)), ("320", 320), ("32x48x64", (32, 48, 64)),
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "8", "64,80", "64,80,80,3", "1.5"])
def test_parse_shape_rejects_naming_the_text(text):
    with pytest.raises(ValueError) as e:
        parse_shape(text)
    assert repr(text) in str(e.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_demo_dataset(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="n_test"):
        generate_demo_dataset(tmp_path, n_test=-1)
    with pytest.raises(ValueError, match="shape"):
        generate_demo_dataset(tmp_path, shape=(8, 64, 64))


@pytest.mark.parametrize("variant", ["a", "b"])
def test_labelled_surfaces_have_almost_no_tunnels_or_cavities(variant):
    """Real labels have essentially no cavities and few tunnels: the demo's
    TopoScore is only meaningful if its labels look the same (the labelled
    layers of neighbouring sheets must not merge in patches)."""
    from nx47_pipeline.data.demo import SCROLL_IDS, _scroll_style
    from nx47_pipeline.model.betti_matching import betti_matching_counts

    for i in range(3):
        style = _scroll_style(5, SCROLL_IDS[i], variant)
        _, lab = make_volume((64, 64, 64), seed=100 + i, style=style, label_2_fraction=0.5)
        surface = lab == 1
        assert 0.03 < surface.mean() < 0.2
        counts = betti_matching_counts(surface, surface)
        betti = counts[:, 1]  # finite features of the label itself
        assert betti[1] <= 10 and betti[2] == 0, (variant, i, betti.tolist())


def test_real_shape_and_scroll_mix_with_few_distinct_volumes(tmp_path):
    """The options a full-scale rehearsal needs: shapes and scrolls by count (as in the
    real dataset), ghost csv rows, deprecated pairs, and hard links standing in for
    most volumes — each id linked to a volume of its own split, shape and scroll."""
    root = generate_demo_dataset(
        tmp_path / "d", n_train=20, n_test=4, seed=3, shapes=[("24", 15), ((16, 24, 24), 5)],
        scrolls=[("34117", 12), ("35360", 6), ("44430", 2)], distinct=6, n_ghost=3, n_deprecated=4)
    rows = list(csv.DictReader(open(root / "train.csv")))
    assert len(rows) == 23  # 20 pairs + 3 rows without files
    by_id = {r["id"]: r["scroll_id"] for r in rows}
    found = discover(root)
    assert len(found.pairs) == 20 and len(found.test) == 4
    counts = collections.Counter(by_id[rec.id] for rec in found.pairs)
    assert counts == {"34117": 12, "35360": 6, "44430": 2}
    shapes = collections.Counter(read_volume(rec.image_path).shape for rec in found.pairs)
    assert shapes == {(24, 24, 24): 15, (16, 24, 24): 5}
    assert len(list((root / "deprecated_train_images").glob("*.tif"))) == 4
    inode = {}
    for rec in found.pairs:
        st = os.stat(rec.image_path)
        key = (read_volume(rec.image_path).shape, by_id[rec.id])
        inode.setdefault(st.st_ino, set()).add(key)
        assert os.stat(rec.label_path).st_nlink == st.st_nlink  # label linked with its image
    assert len(inode) < 20  # far fewer distinct volumes than ids ...
    assert all(len(keys) == 1 for keys in inode.values())  # ... each shared within one shape and scroll


def test_scroll_counts_of_the_csv_rows_as_the_real_counts_are(tmp_path):
    """The real per-scroll counts (806) are train.csv's rows: 786 pairs and 20 rows
    without files. Counts that sum to pairs + ghost rows share both out."""
    root = generate_demo_dataset(tmp_path / "d", n_train=5, n_test=0, shape=16,
                                 scrolls=[("34117", 5), ("53997", 2)], n_ghost=2, n_deprecated=0)
    rows = list(csv.DictReader(open(root / "train.csv")))
    assert collections.Counter(r["scroll_id"] for r in rows) == {"34117": 5, "53997": 2}
    assert len(discover(root).pairs) == 5
    with pytest.raises(ValueError, match=r"sum to 8, but there are 5 training pairs .*nor 7 train.csv rows"):
        generate_demo_dataset(tmp_path / "e", n_train=5, n_test=0, shape=16,
                              scrolls=[("34117", 6), ("53997", 2)], n_ghost=2, n_deprecated=0)


def test_shape_and_scroll_counts_must_add_up(tmp_path):
    with pytest.raises(ValueError, match="shapes: the counts sum to 5, but there are 4"):
        generate_demo_dataset(tmp_path, n_train=4, shapes=[("24", 5)])
    with pytest.raises(ValueError, match="scrolls: the counts sum to 3"):
        generate_demo_dataset(tmp_path, n_train=4, scrolls=[("1", 3)])
    with pytest.raises(ValueError, match="--shapes: '320:x' is not KEY:COUNT"):
        parse_counts("320:x", what="--shapes")
