"""Filter bank, slab streaming and class-balanced sampling."""

from __future__ import annotations

import numpy as np
import pytest

from nx47_pipeline.model import features as F
from nx47_pipeline.data.demo import make_volume


@pytest.fixture(scope="module")
def pair():
    return make_volume((36, 34, 32), seed=3)


def test_feature_names_match_stack_and_are_unique(pair):
    image, _ = pair
    for scales in ((1.0, 2.0, 4.0), (1.5,)):
        names = F.feature_names(scales)
        feats = F.compute_features(image, scales=scales)
        assert feats.shape == (len(names),) + image.shape
        assert feats.dtype == np.float32
        assert len(set(names)) == len(names)
        assert names[0] == "intensity"
        assert np.isfinite(feats).all()
    # raw intensity is scaled to [0, 1]
    np.testing.assert_allclose(feats[0], image / 255.0, atol=1e-6)


@pytest.mark.parametrize("slab", [1, 5, 13, 64])
def test_slabs_equal_whole_volume(pair, slab):
    image, _ = pair
    scales = (1.0, 2.0, 4.0)
    whole = F.compute_features(image, scales=scales)
    got = np.empty_like(whole)
    spans = []
    for z0, z1, feats in F.iter_feature_slabs(image, scales=scales, slab=slab):
        assert feats.shape == (whole.shape[0], z1 - z0) + image.shape[1:]
        got[:, z0:z1] = feats
        spans.append((z0, z1))
    assert spans[0][0] == 0 and spans[-1][1] == image.shape[0]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)


def test_cache_chunking_does_not_change_results(pair, monkeypatch):
    image, _ = pair
    whole = F.compute_features(image)  # one chunk: the planes are small
    monkeypatch.setattr(F, "CHUNK_VOXELS", 2 * image.shape[1] * image.shape[2])
    np.testing.assert_allclose(F.compute_features(image), whole, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(F, "CHUNK_VOXELS", 1)
    got = np.concatenate([f for _, _, f in F.iter_feature_slabs(image, slab=9)], axis=1)
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)


def test_halo_covers_the_largest_kernel():
    assert F.halo_for((1.0,)) < F.halo_for((1.0, 4.0)) == F.halo_for((4.0,))
    # a thin slab of a volume with a feature far from it still sees it exactly
    vol = np.zeros((60, 8, 8), np.uint8)
    vol[30] = 255
    whole = F.compute_features(vol, scales=(4.0,))
    for z0, z1, feats in F.iter_feature_slabs(vol, scales=(4.0,), slab=4):
        np.testing.assert_allclose(feats, whole[:, z0:z1], atol=1e-6)


def test_finite_differences_match_numpy_gradient():
    rng = np.random.default_rng(2)
    for shape in ((2, 5, 7), (6, 2, 3), (9, 8, 7)):
        a = rng.random(shape, dtype=np.float32)
        for axis in range(3):
            np.testing.assert_allclose(F._diff1(a, axis), np.gradient(a, axis=axis), atol=1e-6)
        d1, d2 = F._z_derivatives(a, 0, shape[0])
        np.testing.assert_allclose(d1, np.gradient(a, axis=0), atol=1e-6)
        np.testing.assert_allclose(d2, F._second_diff(a, 0), atol=1e-6)
        if shape[0] > 2:  # interior: the [1, -2, 1] stencil
            np.testing.assert_allclose(d2[1:-1], a[2:] - 2 * a[1:-1] + a[:-2], atol=1e-6)


def test_closed_form_eigenvalues_match_numpy():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5000, 3, 3))
    m = m + m.transpose(0, 2, 1)
    m[:5] = np.eye(3) * 2.0  # triple eigenvalue
    m[5:10] = np.diag([1.0, 1.0, -3.0])  # double eigenvalue
    m[10:15] = 0.0
    m = m.astype(np.float32)
    parts = [np.ascontiguousarray(m[:, i, j]) for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
    e1, e2, e3 = F.sym3_eigvals(*parts)
    ref = np.linalg.eigvalsh(m.astype(np.float64))[:, ::-1]
    got = np.stack([e1, e2, e3], axis=1)
    scale = np.abs(ref).max(axis=1, keepdims=True) + 1e-6
    assert np.all(np.abs(got - ref) <= 1e-4 * scale + 1e-6)


def test_sheetness_prefers_plates_to_tubes():
    n = 33
    zz, yy, xx = np.mgrid[:n, :n, :n]
    plate = (200 * np.exp(-0.5 * ((zz - 16) / 1.5) ** 2)).astype(np.uint8)
    tube = (200 * np.exp(-0.5 * (((zz - 16) ** 2 + (yy - 16) ** 2) / 1.5**2))).astype(np.uint8)
    names = F.feature_names((2.0,))
    i_sheet, i_lmax = names.index("sheetness_s2"), names.index("hess_lmax_s2")
    fp = F.compute_features(plate, scales=(2.0,))
    ft = F.compute_features(tube, scales=(2.0,))
    c = (16, 16, 16)
    assert fp[(i_lmax,) + c] < 0 and ft[(i_lmax,) + c] < 0  # both bright ridges
    assert fp[(i_sheet,) + c] > 0.05
    assert ft[(i_sheet,) + c] < 0.2 * fp[(i_sheet,) + c]
    # the plate's sheetness peaks on the plate, not beside it
    assert fp[(i_sheet, 16, 16, 16)] > 3 * fp[(i_sheet, 22, 16, 16)]


def test_progress_per_group_and_cancel_propagates(pair):
    image, _ = pair
    calls = []
    F.compute_features(image, scales=(1.0, 2.0), on_progress=lambda d, t, w: calls.append((d, t, w)))
    assert [c[0] for c in calls] == list(range(1, 8))  # 1 + 3 groups per scale
    assert all(c[1] == 7 for c in calls)
    whats = [c[2] for c in calls]
    assert "smooth \u03c3=2" in whats and "gradient+hessian \u03c3=1" in whats

    class Stop(Exception):
        pass

    def stop(done, total, what):
        raise Stop

    with pytest.raises(Stop):
        F.compute_features(image, on_progress=stop)
    with pytest.raises(Stop):
        for _ in F.iter_feature_slabs(image, slab=8, on_progress=stop):
            pass


def _label_encoding_features(label):
    """Features whose first channel is the label itself (to see what was sampled)."""
    return np.stack([label.astype(np.float32), np.arange(label.size, dtype=np.float32).reshape(label.shape)])


def _sample_stack(features, label, *, n_per_class, seed):
    """The reference: the same class-balanced voxels as ``volume_sample``, taken
    from a whole feature stack held in memory."""
    label = F._check_label(label, features.shape[1:])
    idx, y = F._choose_indices(label, n_per_class, seed)
    return np.ascontiguousarray(features.reshape(features.shape[0], -1)[:, idx].T, dtype=np.float32), y


def test_sample_skips_ignore_and_balances_classes():
    rng = np.random.default_rng(1)
    label = rng.choice([0, 1, 2], size=(20, 20, 20), p=[0.5, 0.05, 0.45]).astype(np.uint8)
    feats = _label_encoding_features(label)
    n1 = int((label == 1).sum())
    X, y = _sample_stack(feats, label, n_per_class=1000, seed=7)
    assert X.dtype == np.float32 and y.dtype == np.uint8
    assert set(np.unique(y)) == {0, 1}
    np.testing.assert_array_equal(X[:, 0], y)  # no label-2 voxel, labels right
    assert (y == 0).sum() == 1000 and (y == 1).sum() == n1  # smaller class: all of it
    assert len(np.unique(X[:, 1])) == len(y)  # no voxel twice
    X2, y2 = _sample_stack(feats, label, n_per_class=1000, seed=7)
    np.testing.assert_array_equal(X, X2)
    X3, _ = _sample_stack(feats, label, n_per_class=1000, seed=8)
    assert not np.array_equal(X, X3)


def test_volume_sample_equals_whole_stack_sample(pair):
    image, label = pair
    Xw, yw = _sample_stack(F.compute_features(image), label, n_per_class=300, seed=4)
    Xs, ys = F.volume_sample(image, label, n_per_class=300, seed=4, slab=7)
    np.testing.assert_array_equal(ys, yw)
    np.testing.assert_allclose(Xs, Xw, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem(pair):
    image, label = pair
    with pytest.raises(ValueError, match="3-D"):
        F.compute_features(image[0])
    with pytest.raises(ValueError, match="scales"):
        F.compute_features(image, scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="slab"):
        F.iter_feature_slabs(image, slab=0)
    with pytest.raises(ValueError, match="shape"):
        F.volume_sample(image, label[:-1], n_per_class=10, seed=0)
    bad = label.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="0, 1 or 2"):
        _sample_stack(F.compute_features(image, scales=(1.0,)), bad, n_per_class=10, seed=0)
    with pytest.raises(ValueError, match="n_per_class"):
        F.volume_sample(image, label, n_per_class=0, seed=0)


def test_threaded_slabs_give_identical_features_in_z_order():
    from nx47_pipeline.model.features import iter_feature_slabs

    rng = np.random.default_rng(3)
    vol = (rng.random((70, 40, 36)) * 255).astype(np.uint8)
    one = list(iter_feature_slabs(vol, slab=16, workers=1))
    many = list(iter_feature_slabs(vol, slab=16, workers=3))
    assert [(a, b) for a, b, _ in many] == [(a, b) for a, b, _ in one] == [
        (0, 16), (16, 32), (32, 48), (48, 64), (64, 70)]
    for (_, _, f1), (_, _, f3) in zip(one, many):
        np.testing.assert_array_equal(f1, f3)


def test_a_raising_progress_callback_stops_the_threaded_slabs():
    import threading

    from nx47_pipeline.model.features import iter_feature_slabs

    class Stop(Exception):
        pass

    seen = []

    def on_progress(done, total, what):
        seen.append(done)
        if done == 2:
            raise Stop()

    vol = np.zeros((80, 24, 24), dtype=np.uint8)
    with pytest.raises(Stop):
        for _ in iter_feature_slabs(vol, slab=8, workers=2, on_progress=on_progress):
            pass
    assert seen == [1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("nx47-features")]


def test_workers_is_validated():
    from nx47_pipeline.model.features import iter_feature_slabs

    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        iter_feature_slabs(np.zeros((8, 8, 8), np.uint8), workers=0)


def test_gradcurv_tells_the_steep_flank_of_an_asymmetric_sheet_from_its_slow_flank():
    """A bright sheet (normal along y) falling off steeply on one side and
    slowly on the other: two voxels off its centre, the second derivative
    along the gradient is positive (past the inflection) on the steep side and
    negative on the slow side, whichever way the sheet faces."""
    from nx47_pipeline.model.features import compute_features, feature_names

    y = np.arange(40, dtype=np.float32)[None, :, None]
    d = y - 20.0
    for sign in (1.0, -1.0):
        steep = np.where(sign * d >= 0, 1.0, 3.0)  # sigma of the profile on each side
        vol = np.broadcast_to(np.exp(-0.5 * (d / steep) ** 2), (24, 40, 24)).astype(np.float32)
        feats = compute_features(vol, scales=(1.0,))
        gc = feats[feature_names((1.0,)).index("gradcurv_s1")][12, :, 12]
        assert gc[int(20 + sign * 2.5)] > 0 > gc[int(20 - sign * 2.5)]
