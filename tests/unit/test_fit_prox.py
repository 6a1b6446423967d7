"""fit_prox: optimality, penalties, caps, callbacks, persistence, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from nx47_pipeline.model.features import compute_features, feature_names, volume_sample
from nx47_pipeline.model.linear import FitResult, LogisticModel, fit_prox, standardize_fit
from nx47_pipeline.model.postprocess import otsu_baseline, postprocess
from nx47_pipeline.io.volumes import read_pair


def _logistic_data(n=3000, seed=0):
    """Two informative columns, three pure-noise columns, one near-constant."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)) * [1.0, 3.0, 1.0, 2.0, 1.0, 1e-3] + [0.0, 5.0, 0.0, -1.0, 2.0, 7.0]
    logit = 2.0 * X[:, 0] - 0.5 * (X[:, 1] - 5.0) + 0.3
    y = (rng.random(n) < expit(logit)).astype(np.uint8)
    return X.astype(np.float32), y


def _smooth_grad(model: LogisticModel, X, y):
    """Gradient of mean logistic loss + l2/2 ||w||^2 at the model (standardized)."""
    Z = (X.astype(np.float64) - model.mean) / model.scale
    r = expit(Z @ model.coef + model.intercept) - y
    return Z.T @ r / len(y) + model.l2 * model.coef, float(r.mean())


def _objective(model: LogisticModel, X, y):
    Z = (X.astype(np.float64) - model.mean) / model.scale
    m = Z @ model.coef + model.intercept
    loss = np.mean(np.logaddexp(0.0, -(2.0 * y - 1.0) * m))
    return loss + 0.5 * model.l2 * model.coef @ model.coef + model.l1 * np.abs(model.coef).sum()


def test_solution_satisfies_l1_l2_optimality_conditions():
    X, y = _logistic_data()
    res = fit_prox(X, y, l1=0.02, l2=0.01, tol=1e-12, max_iter=5000)
    m = res.model
    g, gb = _smooth_grad(m, X, y)
    nz = m.coef != 0
    assert nz.any() and (~nz).any()
    # subgradient conditions: g_j = -l1 sign(w_j) where w_j != 0, |g_j| <= l1 where w_j == 0
    np.testing.assert_allclose(g[nz], -m.l1 * np.sign(m.coef[nz]), atol=1e-5)
    assert np.all(np.abs(g[~nz]) <= m.l1 + 1e-6)
    assert abs(gb) < 1e-6  # unpenalised intercept
    assert res.objective[-1] == pytest.approx(_objective(m, X, y), rel=1e-12)


def test_objective_never_increases_and_converges():
    X, y = _logistic_data(seed=1)
    res = fit_prox(X, y, l1=1e-3, l2=1e-3, tol=1e-8, max_iter=2000)
    assert isinstance(res, FitResult)
    assert res.converged and res.stopped_reason == "converged"
    obj = np.array(res.objective)
    assert len(obj) == res.n_iter
    assert np.all(np.diff(obj) <= 1e-12)
    assert obj[-1] < obj[0]


def test_l1_zeroes_useless_features_and_keeps_informative():
    X, y = _logistic_data(seed=2)
    res = fit_prox(X, y, l1=0.03, l2=1e-4, tol=1e-10, max_iter=3000)
    coef = res.model.coef
    assert abs(coef[0]) > 0.3 and abs(coef[1]) > 0.3
    np.testing.assert_array_equal(coef[2:], 0.0)
    dense = fit_prox(X, y, l1=0.0, l2=1e-4, tol=1e-10, max_iter=3000).model.coef
    assert np.all(dense[2:5] != 0)


def test_iteration_cap_and_per_iteration_callback():
    X, y = _logistic_data(seed=3)
    seen = []
    res = fit_prox(X, y, max_iter=7, tol=0.0, on_iter=lambda i, n, o: seen.append((i, n, o)))
    assert res.stopped_reason == "max_iter" and not res.converged
    assert res.n_iter == 7
    assert [s[0] for s in seen] == list(range(1, 8))
    assert all(s[1] == 7 for s in seen)
    assert [s[2] for s in seen] == res.objective


class FakeClock:
    def __init__(self, start=100.0, step=1.0):
        self.t = start
        self.step = step

    def __call__(self):
        self.t += self.step
        return self.t


def test_time_cap_and_deadline_are_honoured():
    X, y = _logistic_data(seed=4)
    res = fit_prox(X, y, tol=0.0, max_iter=1000, time_cap_s=5.0, clock=FakeClock())
    assert res.stopped_reason == "time_cap" and 0 < res.n_iter < 10
    clock = FakeClock()
    res = fit_prox(X, y, tol=0.0, max_iter=1000, deadline=110.0, clock=clock)
    assert res.stopped_reason == "deadline" and 0 < res.n_iter < 10
    # a deadline already past: no iteration, still a usable model
    res = fit_prox(X, y, max_iter=1000, deadline=0.0)
    assert res.stopped_reason == "deadline" and res.n_iter == 0
    p = expit(res.model.decision_function(X))
    assert p.shape == (len(y),) and np.allclose(p, y.mean(), atol=1e-6)


def test_callback_exception_propagates():
    X, y = _logistic_data(seed=5)

    class Cancelled(Exception):
        pass

    def cancel(i, n, o):
        if i == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        fit_prox(X, y, on_iter=cancel)


def test_warm_start_from_the_optimum_stops_at_once():
    X, y = _logistic_data(seed=6)
    names = [f"c{i}" for i in range(X.shape[1])]
    first = fit_prox(X, y, l1=1e-3, l2=1e-3, tol=1e-12, max_iter=5000, feature_names=names)
    # a different sample of the same problem: standardization differs
    again = fit_prox(X[::-1], y[::-1], l1=1e-3, l2=1e-3, tol=1e-9, max_iter=5000,
                     feature_names=names, warm_start=first.model)
    assert again.n_iter < 10
    assert again.objective[-1] == pytest.approx(first.objective[-1], rel=1e-8)
    with pytest.raises(ValueError, match="warm_start"):
        fit_prox(X, y, warm_start=first.model)  # default names f0.. differ


def test_standardize_fit_handles_constant_columns():
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    mean, scale = standardize_fit(X)
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(scale, [1.0, 1.0])


def test_save_load_roundtrip_without_pickle(tmp_path: Path):
    X, y = _logistic_data(seed=7)
    model = fit_prox(X, y, max_iter=50, feature_names=[f"c{i}" for i in range(6)], scales=(1.0, 3.0)).model
    path = model.save(tmp_path / "model" / "model.npz")
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    with np.load(path, allow_pickle=False) as z:
        assert "coef" in z.files
    back = LogisticModel.load(path)
    assert back.feature_names == model.feature_names and back.scales == (1.0, 3.0)
    np.testing.assert_array_equal(back.decision_function(X), model.decision_function(X))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an NX47 model"):
        LogisticModel.load(tmp_path / "other.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.npz"):
        LogisticModel.load(broken)
    with pytest.raises(FileNotFoundError):
        LogisticModel.load(tmp_path / "absent.npz")


def test_predict_volume_matches_row_predictions():
    rng = np.random.default_rng(8)
    vol = (rng.random((20, 18, 16)) * 255).astype(np.uint8)
    names = feature_names((1.0, 2.0))
    model = LogisticModel(coef=rng.normal(size=len(names)), intercept=0.2, mean=rng.normal(size=len(names)),
                          scale=rng.random(len(names)) + 0.5, feature_names=names, scales=(1.0, 2.0))
    feats = compute_features(vol, scales=(1.0, 2.0))
    ref = expit(model.decision_function(feats.reshape(len(names), -1).T)).reshape(vol.shape)
    calls = []
    got = model.predict_volume(vol, slab=6, on_progress=lambda d, t, w: calls.append((d, t)))
    assert got.dtype == np.float32 and got.shape == vol.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert calls[-1] == (4, 4)


def test_input_errors_name_the_parameter():
    X, y = _logistic_data(n=50)
    with pytest.raises(ValueError, match="both classes"):
        fit_prox(X, np.zeros(50, np.uint8))
    with pytest.raises(ValueError, match="y has 49"):
        fit_prox(X, y[:-1])
    with pytest.raises(ValueError, match="l1"):
        fit_prox(X, y, l1=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        fit_prox(X, y, max_iter=0)
    with pytest.raises(ValueError, match="feature_names"):
        fit_prox(X, y, feature_names=["a"])


def _dice(mask, label):
    keep = label != 2
    a = mask.astype(bool)[keep]
    b = (label == 1)[keep]
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_model_learns_from_labels_and_beats_otsu(demo_root: Path):
    """Fit on 4 demo volumes, pick the threshold on them (as the search does),
    score 2 held-out volumes: the model must clearly beat plain Otsu."""
    images = sorted((demo_root / "train_images").glob("*.tif"))
    pairs = [read_pair(p, demo_root / "train_labels" / p.name) for p in images]
    train, held_out = pairs[:4], pairs[4:]
    Xs, ys = [], []
    for i, (image, label) in enumerate(train):
        X, y = volume_sample(image, label, n_per_class=1500, seed=i)
        Xs.append(X)
        ys.append(y)
    res = fit_prox(np.concatenate(Xs), np.concatenate(ys), l1=1e-3, l2=1e-3, max_iter=300,
                   feature_names=feature_names())
    thresholds = (0.5, 0.65, 0.8)

    def scores(pairs_, high):
        return [_dice(postprocess(res.model.predict_volume(im), low=high - 0.15, high=high, min_size=20), lab)
                for im, lab in pairs_]

    best = max(thresholds, key=lambda t: np.mean(scores(train, t)))
    model_scores = scores(held_out, best)
    otsu_scores = [_dice(otsu_baseline(image), label) for image, label in held_out]
    # measured on the demo fixture: ~0.54 vs ~0.48 Dice
    assert np.mean(model_scores) > np.mean(otsu_scores) + 0.04, (best, model_scores, otsu_scores)
