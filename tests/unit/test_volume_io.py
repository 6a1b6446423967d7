"""Volume I/O: LZW round trip and every bad-file case, each naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from nx47_pipeline.io.volumes import (
    VolumeError,
    VolumeHeader,
    read_header,
    read_pair,
    read_slice,
    read_volume,
    write_volume,
)


def _vol(shape=(6, 12, 10), high=256, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape, dtype=np.uint8)


def test_round_trip_is_lzw_uint8_and_exact(tmp_path):
    arr = _vol()
    path = write_volume(tmp_path / "sub" / "1407735.tif", arr)
    assert path == tmp_path / "sub" / "1407735.tif"
    hdr = read_header(path)
    assert hdr == VolumeHeader(shape=(6, 12, 10), dtype="uint8", compression="LZW", n_pages=6)
    np.testing.assert_array_equal(read_volume(path), arr)
    # a plain tifffile reader sees the same volume (the competition format)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression.name == "LZW"
        np.testing.assert_array_equal(tif.asarray(), arr)
    np.testing.assert_array_equal(read_slice(path, 4), arr[4])
    np.testing.assert_array_equal(read_slice(path, -1), arr[-1])


def test_write_is_deterministic_and_leaves_no_temp(tmp_path):
    arr = _vol()
    a = write_volume(tmp_path / "a.tif", arr).read_bytes()
    b = write_volume(tmp_path / "b.tif", arr).read_bytes()
    assert a == b
    write_volume(tmp_path / "a.tif", arr[::-1].copy())  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]
    np.testing.assert_array_equal(read_volume(tmp_path / "a.tif"), arr[::-1])


def test_write_rejects_bad_arrays_naming_the_path(tmp_path):
    with pytest.raises(VolumeError) as e:
        write_volume(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    assert e.value.code == "not_3d" and str(tmp_path / "x.tif") in str(e.value)
    with pytest.raises(VolumeError) as e:
        write_volume(tmp_path / "x.tif", np.zeros((2, 4, 4), np.float32))
    assert e.value.code == "dtype" and "float32" in e.value.problem
    with pytest.raises(ValueError, match="compression"):
        write_volume(tmp_path / "x.tif", np.zeros((2, 4, 4), np.uint8), compression="jpeg2k")
    assert not any(tmp_path.iterdir())


def _expect(path, code, fn=read_volume, **kw):
    with pytest.raises(VolumeError) as e:
        fn(path, **kw)
    err = e.value
    assert err.code == code, err
    assert err.path == str(path)
    assert str(err) == f"{path}: {err.problem}"
    return err


def test_not_3d(tmp_path):
    p = tmp_path / "flat.tif"
    tifffile.imwrite(p, np.zeros((12, 10), np.uint8), compression="lzw")
    err = _expect(p, "not_3d", read_header)
    assert "(12, 10)" in err.problem
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb")
    _expect(rgb, "not_3d")


def test_wrong_dtype(tmp_path):
    p = tmp_path / "u16.tif"
    tifffile.imwrite(p, np.zeros((3, 8, 8), np.uint16), compression="lzw", photometric="minisblack")
    err = _expect(p, "dtype", read_header)
    assert "uint16" in err.problem
    _expect(p, "dtype", read_volume)


def test_label_values_outside_0_1_2(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[1, 2, 3] = 255
    lab[2, 2, 3] = 3
    p = write_volume(tmp_path / "lab.tif", lab)
    err = _expect(p, "label_values", kind="label")
    assert "3" in err.problem and "255" in err.problem and "2 voxels" in err.problem
    # the same file is a valid image
    assert read_volume(p, kind="image").shape == (4, 8, 8)
    with pytest.raises(ValueError, match="kind"):
        read_volume(p, kind="mask")


def test_pair_shape_mismatch(tmp_path):
    img = write_volume(tmp_path / "img" / "7.tif", _vol((4, 8, 8)))
    lab = write_volume(tmp_path / "lab" / "7.tif", np.zeros((4, 8, 9), np.uint8))
    with pytest.raises(VolumeError) as e:
        read_pair(img, lab)
    assert e.value.code == "shape_mismatch"
    assert e.value.path == str(lab)
    assert "(4, 8, 9)" in e.value.problem and "(4, 8, 8)" in e.value.problem
    good = write_volume(tmp_path / "lab" / "8.tif", np.full((4, 8, 8), 2, np.uint8))
    image, label = read_pair(img, good)
    assert image.shape == label.shape == (4, 8, 8)


def test_truncated_file(tmp_path):
    p = write_volume(tmp_path / "full.tif", _vol((8, 32, 32)))
    data = p.read_bytes()
    for n in (len(data) - 50, len(data) // 2, 40, 3):
        cut = tmp_path / f"cut{n}.tif"
        cut.write_bytes(data[:n])
        _expect(cut, "corrupt", read_header)
        _expect(cut, "corrupt", read_volume)


def test_corrupt_pixel_data(tmp_path):
    p = write_volume(tmp_path / "full.tif", _vol((4, 16, 16)))
    with tifffile.TiffFile(p) as tif:
        off, cnt = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(p.read_bytes())
    data[off : off + cnt] = b"\xff" * cnt
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    read_header(bad)  # the tags are intact ...
    err = _expect(bad, "corrupt")  # ... the pixels are not
    assert "decode" in err.problem


def test_empty_missing_not_tiff_folder(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    assert "empty" in _expect(empty, "corrupt", read_header).problem
    _expect(tmp_path / "nope.tif", "unreadable")
    txt = tmp_path / "notes.tif"
    txt.write_text("this is not an image\n")
    _expect(txt, "not_tiff", read_header)
    folder = tmp_path / "dir.tif"
    folder.mkdir()
    _expect(folder, "unreadable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions(tmp_path):
    p = write_volume(tmp_path / "locked.tif", _vol((2, 4, 4)))
    p.chmod(0)
    try:
        _expect(p, "unreadable", read_header)
    finally:
        p.chmod(0o644)


def test_read_slice_range(tmp_path):
    p = write_volume(tmp_path / "v.tif", _vol((3, 5, 5)))
    err = _expect(p, "slice_range", lambda q: read_slice(q, 3))
    assert "0..2" in err.problem


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    good = [write_volume(tmp_path / f"{i}.tif", _vol((2, 4, 4), seed=i)) for i in range(3)]
    bad = tmp_path / "1b.tif"
    bad.write_bytes(b"II*\x00garbage")
    results, errors = {}, {}
    for p in sorted(tmp_path.glob("*.tif")):
        try:
            results[p.name] = read_volume(p)
        except VolumeError as exc:
            errors[p.name] = exc.code
    assert set(results) == {g.name for g in good}
    assert errors == {"1b.tif": "corrupt"}


def test_bad_file_is_reported_once_without_tifffile_log_noise(tmp_path, caplog):
    p = write_volume(tmp_path / "full.tif", _vol((8, 16, 16)))
    data = p.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 2])
    with caplog.at_level("DEBUG", logger="tifffile"):
        _expect(bad, "corrupt")
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
