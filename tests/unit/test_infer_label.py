"""``nx47 infer``'s chunked labelling: the components of scipy, each block labelled once."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

S26 = np.ones((3, 3, 3), dtype=bool)
S6 = ndimage.generate_binary_structure(3, 1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` have the same background and the same components (ids aside)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _label_zarr(tmp_path, img: np.ndarray, chunks, structure) -> tuple[np.ndarray, int]:
    import dask

    from nx47_pipeline.run.slabs import label_components

    src = zarr.create_array(str(tmp_path / "src.zarr"), shape=img.shape, chunks=chunks, dtype="uint8")
    src[...] = img
    with dask.config.set(scheduler="sync"):
        bound = label_components(tmp_path / "src.zarr", tmp_path / "lab.zarr", structure=structure,
                                 work=tmp_path / "work")
    assert not (tmp_path / "work").exists()
    return np.asarray(zarr.open_array(str(tmp_path / "lab.zarr"), mode="r")[...]), bound


@pytest.mark.parametrize("structure", [S26, S6], ids=["26", "6"])
def test_chunked_labelling_has_the_components_of_scipy(structure, tmp_path):
    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter(rng.standard_normal((41, 37, 30)), 1.5) > 0.05
    got, bound = _label_zarr(tmp_path, img, (11, 13, 9), structure)
    want, _ = ndimage.label(img, structure=structure)
    assert same_partition(got, want)
    assert got.max() <= bound


@pytest.mark.parametrize("structure", [S26, S6], ids=["26", "6"])
def test_chunked_labelling_of_speckles_touching_across_chunk_edges_and_corners(structure, tmp_path):
    """Sparse voxels meet diagonally across the edges and corners of chunks (26-connected), which
    pairs of facing planes alone miss."""
    img = np.random.default_rng(5).random((23, 19, 17)) < 0.08
    got, _ = _label_zarr(tmp_path, img, (4, 5, 3), structure)
    want, n = ndimage.label(img, structure=structure)
    assert n > 50 and same_partition(got, want)


def u_shapes() -> np.ndarray:
    """Components that cross several slabs of 8 along z: a U (two legs from z 2 joined only by a
    bridge at z 30, four slabs up), an upside-down U (one bar at the bottom splitting into two legs),
    and a W (three legs joined pairwise at different heights)."""
    img = np.zeros((40, 20, 20), dtype=bool)
    img[2:31, 3, 3] = img[2:31, 3, 9] = img[30, 3, 3:10] = True  # U
    img[2, 10, 3:10] = img[2:35, 10, 3] = img[2:35, 10, 9] = True  # upside-down U
    img[1:20, 16, 2] = img[1:37, 16, 8] = img[1:37, 16, 14] = True  # W: legs 1-2 at z 19, 2-3 at z 36
    img[19, 16, 2:9] = img[36, 16, 8:15] = True
    return img


@pytest.mark.parametrize("structure", [S26, S6], ids=["26", "6"])
def test_chunked_labelling_joins_branches_that_meet_only_in_a_later_slab(structure, tmp_path):
    img = u_shapes()
    got, _ = _label_zarr(tmp_path, img, (8, 8, 8), structure)
    want, n = ndimage.label(img, structure=structure)
    assert n == 3 and same_partition(got, want)
    assert got[2, 3, 3] == got[2, 3, 9] and got[34, 10, 3] == got[34, 10, 9] and got[1, 16, 2] == got[1, 16, 14]


def u_classes() -> np.ndarray:
    """Threshold classes whose post-processing decides a branch by what it meets slabs later: a weak
    U with its only strong voxel at the bottom of one leg (hysteresis keeps the other leg only through
    the bridge at the top), a strong U whose legs alone are dust but not together, and a hollow box
    across four slabs open only at its top (its cavity reaches the border only there)."""
    c = np.zeros((40, 24, 24), dtype=np.uint8)
    c[2:31, 2:4, 2:4] = c[2:31, 2:4, 10:12] = c[29:31, 2:4, 2:12] = 1
    c[2, 2, 10] = 2
    c[2:31, 20, 2] = c[2:31, 20, 8] = c[30, 20, 2:9] = 2
    c[4:37, 8:18, 8:18] = 2
    c[5:37, 10:16, 10:16] = 0  # open at z 36: the mouth, 6 x 6 voxels wide
    return c


def test_dask_postprocess_decides_branches_joined_in_a_later_slab_as_numpy_does(tmp_path):
    import dask

    from nx47_pipeline.run.infer import _postprocess_dask, _postprocess_numpy

    classes = u_classes()
    store = zarr.create_array(str(tmp_path / "classes.zarr"), shape=classes.shape, chunks=(8,) * 3, dtype="uint8")
    store[...] = classes
    kw = {"closing_radius": (1, 1, 1), "min_size": 60, "chunk": 8}
    with dask.config.set(scheduler="sync"):
        _postprocess_dask(tmp_path / "classes.zarr", tmp_path / "dask.zarr", **kw)
    _postprocess_numpy(tmp_path / "classes.zarr", tmp_path / "numpy.zarr", **kw)
    a = np.asarray(zarr.open_array(str(tmp_path / "dask.zarr"), mode="r")[...])
    b = np.asarray(zarr.open_array(str(tmp_path / "numpy.zarr"), mode="r")[...])
    # what a frontier merged wrongly would lose: the weak leg without a strong voxel, the dust legs
    # (29 voxels each, 60 the least kept) and the open box's inside (filled as a cavity)
    assert b[3, 2, 2] and b[3, 20, 2] and b[3, 20, 8] and not b[6, 12, 12]
    assert not (tmp_path / "dask.zarr.tmp").exists()
    assert np.array_equal(a, b)


def test_dask_postprocess_labels_each_block_once_and_equals_numpy(tmp_path, monkeypatch):
    """The three labellings of a 3x3x3-chunk volume take a few block labellings per block (the
    labels are recomputed where read, not held: about 12 per block with dask's meta inference; dask-image's
    ``ndmeasure.label`` under the current dask took thousands: quadratic in the chunks)."""
    import scipy.ndimage

    from nx47_pipeline.run.infer import _postprocess_dask, _postprocess_numpy

    rng = np.random.default_rng(7)
    prob = ndimage.gaussian_filter(rng.random((48, 48, 48)), 2.0)
    classes = np.digitize(prob, np.quantile(prob, [0.55, 0.8])).astype(np.uint8)
    store = zarr.create_array(str(tmp_path / "classes.zarr"), shape=classes.shape, chunks=(16,) * 3, dtype="uint8")
    store[...] = classes
    calls = []
    real = scipy.ndimage.label
    monkeypatch.setattr(scipy.ndimage, "label", lambda *a, **k: calls.append(1) or real(*a, **k))
    import dask

    with dask.config.set(scheduler="sync"):
        _postprocess_dask(tmp_path / "classes.zarr", tmp_path / "dask.zarr", closing_radius=(1, 2, 2),
                          min_size=30, chunk=16)
    assert len(calls) <= 16 * 27
    monkeypatch.setattr(scipy.ndimage, "label", real)
    _postprocess_numpy(tmp_path / "classes.zarr", tmp_path / "numpy.zarr", closing_radius=(1, 2, 2),
                       min_size=30, chunk=16)
    a = np.asarray(zarr.open_array(str(tmp_path / "dask.zarr"), mode="r")[...])
    b = np.asarray(zarr.open_array(str(tmp_path / "numpy.zarr"), mode="r")[...])
    assert a.any() and np.array_equal(a, b)


def test_dask_postprocess_never_gathers_a_boolean_selection_in_one_task(tmp_path, monkeypatch):
    """``lab[c == 2].compute()`` concatenates the selection of the whole volume in one task on one
    worker (768^3 under a 1 GB limit per worker: KilledWorker); the strong labels are found per block."""
    import dask

    from nx47_pipeline.run.infer import _postprocess_dask

    real = da.Array.__getitem__

    def getitem(self, index):
        if isinstance(index, da.Array) and index.dtype == bool:
            raise AssertionError("a dask array indexed by a dask boolean mask")
        return real(self, index)

    monkeypatch.setattr(da.Array, "__getitem__", getitem)
    rng = np.random.default_rng(7)
    prob = ndimage.gaussian_filter(rng.random((32, 32, 32)), 2.0)
    classes = np.digitize(prob, np.quantile(prob, [0.55, 0.8])).astype(np.uint8)
    store = zarr.create_array(str(tmp_path / "classes.zarr"), shape=classes.shape, chunks=(16,) * 3, dtype="uint8")
    store[...] = classes
    with dask.config.set(scheduler="sync"):
        _postprocess_dask(tmp_path / "classes.zarr", tmp_path / "dask.zarr", closing_radius=(1, 2, 2),
                          min_size=30, chunk=16)
    assert np.asarray(zarr.open_array(str(tmp_path / "dask.zarr"), mode="r")[...]).any()


def test_rounds_report_progress_on_every_tick_of_the_executor_and_leave_its_chunk_counts_alone(tmp_path):
    """The post-processing's PROGRESS_UPDATE come from the executor's ticks while a round runs (its
    ``check``), not only between rounds; its tasks stay out of the chunk counts of ``cluster.json``."""
    from nx47_pipeline.run.slabs import Rounds, create_like, map_chunks

    class Ticking:
        """An executor whose loop ticks three times per task, as the Dask one does every 0.5 s."""

        def __init__(self):
            self.counted = []

        def map(self, fn, items, *, check=None, count=True):
            self.counted.append(count)
            for i, item in enumerate(items):
                for _ in range(3):
                    check()
                yield i, fn(item)

    src = create_like(tmp_path / "m.zarr", (8, 8, 8), (4, 4, 4))
    src[2:6, 2:6, 2:6] = 1
    create_like(tmp_path / "out.zarr", (8, 8, 8), (4, 4, 4))
    calls = []
    ex = Ticking()
    op = {"src": str(tmp_path / "m.zarr"), "kind": "fill", "radius": (1, 1, 1), "shape": (8, 8, 8),
          "chunks": (4, 4, 4), "dst": str(tmp_path / "out.zarr")}
    map_chunks(op, Rounds(ex, lambda phase, done, total: calls.append((phase, done, total))), phase="fill")
    # begin, 3 ticks for each of the 4 chunks of a slab, the end of each of the 2 rounds
    assert len(calls) == 1 + 2 * (3 * 4 + 1) and calls[-1] == ("fill", 2, 2)
    assert ex.counted == [False, False]


def test_rounds_of_more_tasks_than_a_batch_run_in_batches_with_the_same_labels(tmp_path):
    import dask

    from nx47_pipeline.run.slabs import Rounds, filter_components

    img = u_shapes()
    src = zarr.create_array(str(tmp_path / "src.zarr"), shape=img.shape, chunks=(8, 5, 5), dtype="uint8")
    src[...] = img
    seen = []

    class Counting:
        def map(self, fn, items, *, check=None, count=True):
            seen.append(len(items))
            with dask.config.set(scheduler="sync"):
                yield from enumerate(fn(item) for item in items)

    got = {}
    for batch in (3, 512):
        zarr.create_array(str(tmp_path / f"lab{batch}.zarr"), shape=img.shape, chunks=(8, 5, 5), dtype="int64")
        op = {"src": str(tmp_path / "src.zarr"), "binary": "foreground", "structure": S26, "shape": img.shape,
              "chunks": (8, 5, 5), "out": "labels", "dst": str(tmp_path / f"lab{batch}.zarr"),
              "work": str(tmp_path / "work")}
        filter_components(op, Rounds(Counting(), batch=batch), phase="label")
        got[batch] = np.asarray(zarr.open_array(str(tmp_path / f"lab{batch}.zarr"), mode="r")[...])
    assert max(seen) == 2 * 16 + 1 and 3 in seen  # two slabs of 4 x 4 chunks and a slab's reduce
    assert np.array_equal(got[3], got[512]) and same_partition(got[3], ndimage.label(img, structure=S26)[0])
