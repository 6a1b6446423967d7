"""The grid search: proxy ranking of every candidate, full metric for the top k."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.volumes import read_pair
from nx47_pipeline.model.features import volume_sample
from nx47_pipeline.model.search import RANK_CROP_MIN, rank_crop, run_search


def test_rank_crop_is_the_centre_eighth_of_a_large_volume_and_all_of_a_small_one():
    assert rank_crop((320, 320, 256)) == (slice(80, 240), slice(80, 240), slice(64, 192))
    assert rank_crop((RANK_CROP_MIN, 40, 7)) == (slice(0, RANK_CROP_MIN), slice(0, 40), slice(0, 7))
    assert rank_crop((150, 150, 150))[0] == slice(27, 123)  # never below RANK_CROP_MIN


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    generate_demo_dataset(root, n_train=5, n_test=1, shape=40, seed=3)
    pairs = discover(root).pairs
    Xs, ys = [], []
    for i, rec in enumerate(pairs[:3]):
        img, lab = read_pair(rec.image_path, rec.label_path)
        X, y = volume_sample(img, lab, scales=(1.0, 2.0), n_per_class=800, seed=i)
        Xs.append(X)
        ys.append(y)
    return np.concatenate(Xs), np.concatenate(ys), pairs[3:]


def _search(sample, dest, top_k, **kw):
    X, y, val = sample
    return run_search(X, y, val, dest=dest, l1_grid=(1e-4, 1e-2), l2_grid=(1e-3,), thresholds=(0.3, 0.5, 0.7),
                      gap=0.15, scales=(1.0, 2.0), closing_radius=(1, 1, 1), min_size=10, max_iter=30,
                      top_k=top_k, **kw)


def test_only_the_top_k_by_proxy_are_scored_in_full_and_the_best_is_among_them(sample, tmp_path):
    scored = []
    res = _search(sample, tmp_path / "k2", 2, on_metric=lambda n, v, x: scored.append((n, x)))
    saved = json.loads((tmp_path / "k2" / "results.json").read_text())
    assert saved["top_k"] == 2 and len(saved["ranked"]) == 6  # 2 models x 3 thresholds ranked
    top2 = sorted(saved["ranked"], key=lambda r: -r["proxy"])[:2]
    assert {(r["l1"], r["high"]) for r in res["results"]} == {(r["l1"], r["high"]) for r in top2}
    assert (res["best"]["l1"], res["best"]["high"]) in {(r["l1"], r["high"]) for r in top2}
    assert res["best"]["score"] == max(r["score"] for r in res["results"])
    n_val = len(sample[2])
    assert sum(1 for n, _ in scored if n == "search_score") == 2 * n_val
    # every candidate scored in full (top_k=0) gives the same score to the same candidate
    full = _search(sample, tmp_path / "all", 0)
    assert len(full["results"]) == 6
    by_key = {(r["l1"], r["low"], r["high"]): r["score"] for r in full["results"]}
    for r in res["results"]:
        assert r["score"] == pytest.approx(by_key[(r["l1"], r["low"], r["high"])])


def test_a_rerun_resumes_from_the_cached_rankings_and_scores(sample, tmp_path):
    first = _search(sample, tmp_path / "s", 3)
    calls = []
    again = _search(sample, tmp_path / "s", 3, progress=lambda d, t, **kw: calls.append(kw.get("substep", "")))
    assert again["best"] == first["best"]
    assert not any(str(c).startswith(("rank: features", "score: features")) for c in calls)  # nothing recomputed
