"""Slices of volumes of any size: a zarr array, an OME-Zarr group (level 0)
and a TIFF over the whole-decode limit are read one slice at a time; a small
TIFF is decoded once and cached; long slices are read every n-th voxel."""

from __future__ import annotations

import numpy as np
import pytest

from nx47_pipeline.io.volumes import write_volume
from nx47_widgets.render import SliceRequest, VolumeCache, display_step, read_slices, render_slice

zarr = pytest.importorskip("zarr")


@pytest.fixture()
def volume():
    return np.random.default_rng(3).integers(0, 255, size=(20, 30, 36), dtype=np.uint8)


def test_zarr_and_ome_zarr_level_0_are_read_a_slice_at_a_time(tmp_path, volume):
    zarr.create_array(str(tmp_path / "v.zarr"), shape=volume.shape, chunks=(8, 8, 8),
                      dtype="uint8")[...] = volume
    group = zarr.open_group(str(tmp_path / "scroll.ome.zarr"), mode="w")
    group.attrs["multiscales"] = [{"datasets": [{"path": "s0"}, {"path": "s1"}]}]
    group.create_array("s0", shape=volume.shape, chunks=(8, 8, 8), dtype="uint8")[...] = volume
    group.create_array("s1", shape=(10, 15, 18), chunks=(8, 8, 8), dtype="uint8")
    cache = VolumeCache()
    assert np.array_equal(cache.take(tmp_path / "v.zarr", "z", 4), volume[4])
    assert np.array_equal(cache.take(tmp_path / "scroll.ome.zarr", "x", 30), volume[:, :, 30])
    assert np.array_equal(cache.take(tmp_path / "scroll.ome.zarr", "y", 0), volume[:, 0])
    assert cache.loads == 0 and cache.slices == 3
    with pytest.raises(IndexError, match="outside 0..19"):
        cache.take(tmp_path / "v.zarr", "z", 20)
    req = SliceRequest(image=str(tmp_path / "v.zarr"), axis="y", index=3, pred=str(tmp_path / "v.zarr"))
    img, _, pred, _ = read_slices(req, cache)
    assert np.array_equal(img, volume[:, 3]) and np.array_equal(pred, volume[:, 3] != 0)
    assert render_slice(req, cache=cache).startswith(b"\x89PNG")


def test_a_tiff_is_decoded_whole_when_small_and_page_by_page_when_large(tmp_path, volume):
    tif = tmp_path / "v.tif"
    write_volume(tif, volume)
    small = VolumeCache()
    assert np.array_equal(small.take(tif, "x", 7), volume[:, :, 7])
    assert np.array_equal(small.take(tif, "z", 2), volume[2])
    assert small.loads == 1 and small.slices == 0  # decoded once, cached
    big = VolumeCache(whole_max_voxels=1000)
    assert np.array_equal(big.take(tif, "z", 5), volume[5])
    assert np.array_equal(big.take(tif, "y", 9), volume[:, 9])
    assert big.loads == 0 and big.slices == 2


def test_a_slice_longer_than_max_side_is_read_every_nth_voxel(tmp_path, volume):
    zarr.create_array(str(tmp_path / "v.zarr"), shape=volume.shape, chunks=(8, 8, 8),
                      dtype="uint8")[...] = volume
    tif = tmp_path / "v.tif"
    write_volume(tif, volume)
    assert display_step(volume.shape, "z", 12) == 3 and display_step(volume.shape, "x", 12) == 3
    assert display_step(volume.shape, "z", 2048) == 1
    coarse = VolumeCache(max_side=12)
    assert np.array_equal(coarse.take(tmp_path / "v.zarr", "z", 3), volume[3, ::3, ::3])
    assert np.array_equal(coarse.take(tif, "x", 3), volume[::3, ::3, 3])
