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
    # each of the top candidates is scored with and without thin-surface extraction
    assert sorted((r["l1"], r["high"], r["thin"]) for r in res["results"]) == sorted(
        (r["l1"], r["high"], t) for r in top2 for t in (False, True))
    assert (res["best"]["l1"], res["best"]["high"]) in {(r["l1"], r["high"]) for r in top2}
    assert res["best"]["score"] == max(r["score"] for r in res["results"])
    assert res["best"]["thin"] == next(r["thin"] for r in res["results"] if r["score"] == res["best"]["score"])
    n_val = len(sample[2])
    assert sum(1 for n, _ in scored if n == "search_score") == 2 * 2 * n_val
    # every candidate scored in full (top_k=0) gives the same score to the same candidate
    full = _search(sample, tmp_path / "all", 0)
    assert len(full["results"]) == 12
    by_key = {(r["l1"], r["low"], r["high"], r["thin"]): r["score"] for r in full["results"]}
    for r in res["results"]:
        assert r["score"] == pytest.approx(by_key[(r["l1"], r["low"], r["high"], r["thin"])])


def test_a_thin_candidate_scores_what_postprocess_with_thin_gives(sample, tmp_path):
    from nx47_pipeline.model.linear import LogisticModel
    from nx47_pipeline.model.metric import score_volume
    from nx47_pipeline.model.postprocess import postprocess
    from nx47_pipeline.model.predict import linear_probabilities

    res = _search(sample, tmp_path / "t", 0)
    model = LogisticModel.load(tmp_path / "t" / "model_0.npz")
    image, label = read_pair(sample[2][0].image_path, sample[2][0].label_path)
    prob = linear_probabilities(image, [model])[0]
    per_volume = [json.loads((tmp_path / "t" / f"val_{rec.id}.json").read_text()) for rec in sample[2]]
    cands = per_volume[0]["candidates"]
    for j, ((g, t_i, _), thin) in enumerate([(c, t) for c in cands for t in per_volume[0]["thin"]]):
        if g != 0 or not thin:
            continue
        low, high = [(max(h - 0.15, 0.01), h) for h in (0.3, 0.5, 0.7)][t_i]
        direct = score_volume(postprocess(prob, low=low, high=high, closing_radius=(1, 1, 1), min_size=10,
                                          thin=True), label).score
        assert per_volume[0]["scores"][j] == pytest.approx(direct)
    assert any(r["thin"] for r in res["results"])


def test_the_closing_radius_is_a_candidate_dimension_chosen_by_the_full_score(sample, tmp_path):
    from nx47_pipeline.model.linear import LogisticModel
    from nx47_pipeline.model.metric import score_volume
    from nx47_pipeline.model.postprocess import postprocess
    from nx47_pipeline.model.predict import linear_probabilities

    radii = ((1, 2, 2), (0, 0, 0))
    metrics = []
    res = _search(sample, tmp_path / "r", 0, closing_radii=radii, thin_options=(False,),
                  on_metric=lambda n, v, x: metrics.append((n, x)))
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    # 2 models x 3 pairs x 2 radii, ranked and (top_k=0) scored in full
    assert len(saved["ranked"]) == 12 and len(res["results"]) == 12
    assert {tuple(r["closing_radius"]) for r in res["results"]} == set(radii)
    assert {tuple(x["closing_radius"]) for n, x in metrics if n == "search_mean_score"} == set(radii)
    best = res["best"]
    assert best["score"] == max(r["score"] for r in res["results"])
    assert best["closing_radius"] in [r["closing_radius"] for r in res["results"] if r["score"] == best["score"]]
    # each radius's score is the metric of that closing's mask
    model = LogisticModel.load(tmp_path / "r" / "model_0.npz")
    recs = sample[2]
    probs = [linear_probabilities(read_pair(r.image_path, r.label_path)[0], [model])[0] for r in recs]
    labels = [read_pair(r.image_path, r.label_path)[1] for r in recs]
    for r in res["results"]:
        if r["l1"] != 1e-4:
            continue
        direct = np.mean([score_volume(postprocess(p, low=r["low"], high=r["high"], closing_radius=r["closing_radius"],
                                                   min_size=10), lab).score for p, lab in zip(probs, labels)])
        assert r["score"] == pytest.approx(direct)
    # without closing_radii the search keeps closing_radius, and says so in best
    one = _search(sample, tmp_path / "one", 2, thin_options=(False,))
    assert {tuple(r["closing_radius"]) for r in one["results"]} == {(1, 1, 1)}
    assert one["best"]["closing_radius"] == [1, 1, 1]
    with pytest.raises(ValueError, match="closing_radii"):
        _search(sample, tmp_path / "bad", 2, closing_radii=((1, 2),))


def test_thin_options_false_only_never_thins(sample, tmp_path):
    res = _search(sample, tmp_path / "n", 2, thin_options=(False,))
    assert len(res["results"]) == 2 and not any(r["thin"] for r in res["results"])
    assert res["best"]["thin"] is False
    with pytest.raises(ValueError, match="thin_options"):
        _search(sample, tmp_path / "bad", 2, thin_options=())


def test_a_rerun_resumes_from_the_cached_rankings_and_scores(sample, tmp_path):
    first = _search(sample, tmp_path / "s", 3)
    calls = []
    again = _search(sample, tmp_path / "s", 3, progress=lambda d, t, **kw: calls.append(kw.get("substep", "")))
    assert again["best"] == first["best"]
    assert not any(str(c).startswith(("rank: features", "score: features")) for c in calls)  # nothing recomputed
