"""The grid search: proxy ranking of every candidate, full metric for the top k."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.volumes import read_pair
from nx47_pipeline.model.features import volume_sample
from nx47_pipeline.model.search import RANK_CROP_MIN, rank_crop, run_search
from waits import wait_until  # noqa: E402


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


# ---------------------------------------------------------------------------
# the dust size and hole plug size of the chosen post-processing
# ---------------------------------------------------------------------------
def _sheet_pair(hole: int, rng, *, blob: bool = False):
    """A labelled plane (32 x 32 voxels) in noise; the image's sheet has a
    ``hole`` x ``hole`` hole the label does not have, and with ``blob`` a
    bright 7^3 cube of debris away from it (no label)."""
    lab = np.zeros((24, 40, 40), np.uint8)
    lab[12, 4:36, 4:36] = 1
    img = np.full(lab.shape, 30.0)
    img[11:14, 4:36, 4:36] = 120
    img[12, 4:36, 4:36] = 200
    if hole:
        img[10:15, 18:18 + hole, 18:18 + hole] = 30
    if blob:
        img[2:9, 2:9, 2:9] = 200
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), lab


@pytest.fixture(scope="module")
def pinhole_case(tmp_path_factory):
    """A sample from a sheet without holes, and two validation pairs whose
    image has a 3x3 hole in the sheet that a closing of radius 1 leaves
    open (one tunnel), the label none."""
    from nx47_pipeline.data.discovery import VolumeRecord
    from nx47_pipeline.io.volumes import write_volume

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("pinhole")
    img, lab = _sheet_pair(0, rng)
    X, y = volume_sample(img, lab, scales=(1.0, 2.0), n_per_class=3000, seed=0)
    val = []
    for i in range(2):
        vimg, vlab = _sheet_pair(3, rng)
        write_volume(root / f"img{i}.tif", vimg)
        write_volume(root / f"lab{i}.tif", vlab)
        val.append(VolumeRecord(f"p{i}", root / f"img{i}.tif", root / f"lab{i}.tif", vimg.shape, "s0", "train"))
    return X, y, val


def _pin_search(case, dest, **kw):
    X, y, val = case
    args = dict(dest=dest, l1_grid=(1e-4,), l2_grid=(1e-3,), thresholds=(0.5, 0.7), gap=0.15, scales=(1.0, 2.0),
                closing_radii=((1, 1, 1),), min_size=10, max_iter=60, top_k=0, thin_options=(False,))
    args.update(kw)
    return run_search(X, y, val, **args)


def test_the_search_picks_the_plug_size_that_removes_a_pinhole_tunnel(pinhole_case, tmp_path):
    from nx47_pipeline.model.linear import LogisticModel
    from nx47_pipeline.model.metric import betti_numbers
    from nx47_pipeline.model.postprocess import postprocess
    from nx47_pipeline.model.predict import linear_probabilities
    from nx47_pipeline.model.search import search_units

    metrics, calls = [], []
    res = _pin_search(pinhole_case, tmp_path / "s", dust_sizes=(10, 5000), plug_sizes=(0, 64),
                      on_metric=lambda n, v, x: metrics.append((n, v, x)),
                      progress=lambda d, t, **kw: calls.append((d, t)))
    best = res["best"]
    # dust 5000 removes the sheet (1024 voxels); a plug of at most 64 voxels fills the 3x3 hole
    assert best["min_size"] == 10 and best["plug_size"] == 64
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["best"]["min_size"] == 10 and saved["best"]["plug_size"] == 64
    rows = {(r["min_size"], r["plug_size"]): r["score"] for r in saved["postprocess"]["scores"]}
    assert set(rows) == {(10, 0), (5000, 0), (10, 64)} and saved["postprocess"]["complete"]
    assert rows[(10, 64)] > rows[(10, 0)] > rows[(5000, 0)]
    assert best["score"] == pytest.approx(rows[(10, 64)])  # the score of the whole choice
    # the grid's own scores were at dust 10 without plugs: the choice's first candidate, not scored again
    assert rows[(10, 0)] == pytest.approx(max(r["score"] for r in res["results"]))
    # the chosen masks have no tunnel left; without the plug they keep one
    model = LogisticModel.load(best["model_path"])
    for rec in pinhole_case[2]:
        prob = linear_probabilities(read_pair(rec.image_path, rec.label_path)[0], [model])[0]
        kw = dict(low=best["low"], high=best["high"], closing_radius=best["closing_radius"], min_size=10)
        assert betti_numbers(postprocess(prob, **kw))[1] == 1
        assert betti_numbers(postprocess(prob, **kw, plug_size=best["plug_size"]))[1] == 0
    # METRIC: the grid's with its dust and plug sizes, then one per dust / plug candidate
    grid = [x for n, _, x in metrics if n == "search_mean_score"]
    assert grid and all(x["min_size"] == 10 and x["plug_size"] == 0 for x in grid)
    post = {(x["min_size"], x["plug_size"]): v for n, v, x in metrics if n == "postprocess_score"}
    assert post == pytest.approx(rows)
    assert all(x["closing_radius"] == [1, 1, 1] and x["n_volumes"] == 2
               for n, _, x in metrics if n == "postprocess_score")
    # progress: monotonic, to the search's amount of work, which counts the dust and plug candidates
    total = search_units(n_points=1, n_val=2, n_thresholds=2, n_radii=1, top_k=0, n_dust=2, n_plug=2)
    assert total == 1 + 2 * (2 + 2) + 2 * 3
    assert {t for _, t in calls} == {total} and calls[-1][0] == total
    assert all(b[0] >= a[0] - 1e-9 for a, b in zip(calls, calls[1:]))
    # a rerun resumes from the cached scores and chooses the same
    again = _pin_search(pinhole_case, tmp_path / "s", dust_sizes=(10, 5000), plug_sizes=(0, 64))
    assert again["best"] == best
    # without grids the search keeps its dust size and plugs nothing, and scores nothing more
    plain = _pin_search(pinhole_case, tmp_path / "p")
    assert plain["best"]["min_size"] == 10 and plain["best"]["plug_size"] == 0
    with pytest.raises(ValueError, match="plug_sizes must be"):
        _pin_search(pinhole_case, tmp_path / "bad", plug_sizes=(0, -1))


def _maps(rng):
    """Two validation (prob, label) pairs: a sheet with a 3x3 hole and a 196-voxel blob of debris
    (3 voxels off the sheet: a closing of radius 1 leaves it apart)."""
    out = []
    for _ in range(2):
        label = np.zeros((16, 40, 40), np.uint8)
        label[8, 2:38, 2:38] = 1
        prob = np.where(label == 1, 0.9, 0.02).astype(np.float32)
        prob[8, 18:21, 18:21] = 0.02
        prob[1:5, 1:8, 30:37] = 0.9
        out.append((prob + rng.uniform(0, 0.01, prob.shape).astype(np.float32), label))
    return out


def test_choose_postprocess_is_a_greedy_pass_dust_first_then_plug_ties_to_the_cheaper(tmp_path):
    from nx47_pipeline.model.search import choose_postprocess, choose_units

    maps = _maps(np.random.default_rng(1))
    loads, reports, metrics = [], [], []

    def load(i, on_p):
        loads.append(i)
        on_p(1, 1, "read")
        return maps[i]

    kw = dict(low=0.35, high=0.5, thin=False, closing_radius=(1, 1, 1), min_size=10, plug_size=0)
    res = choose_postprocess(["a", "b"], load, dust_sizes=(10, 300, 600), plug_sizes=(0, 64, 512),
                             cache=tmp_path / "c.json", on_progress=lambda d, t, w: reports.append((d, t, w)),
                             on_metric=lambda v, x: metrics.append((v, x)), **kw)
    # dust 300 and 600 both remove the blob and keep the sheet: the earlier wins the tie; then plugs of 64
    # and 512 both fill the hole: 64 wins
    assert (res["min_size"], res["plug_size"]) == (300, 64)
    scored = {(r["min_size"], r["plug_size"]): r["score"] for r in res["scores"]}
    assert list(scored) == [(10, 0), (300, 0), (600, 0), (300, 64), (300, 512)]
    assert scored[(300, 0)] == pytest.approx(scored[(600, 0)]) and scored[(300, 0)] > scored[(10, 0)]
    assert scored[(300, 64)] == pytest.approx(scored[(300, 512)]) and scored[(300, 64)] > scored[(300, 0)]
    assert res["score"] == pytest.approx(scored[(300, 64)]) and res["complete"]
    assert sorted(loads) == [0, 1]  # each volume read once, kept packed between candidates
    total = choose_units(2, 3, 3)
    assert total == 10 and reports[-1][:2] == (total, total)
    per_candidate = [w for _, _, w in reports if re.match(r"dust \d+, plug \d+: [ab]$", w)]
    assert len(per_candidate) == total  # one report per (candidate, volume)
    assert len(metrics) == 5 and all(x["n_volumes"] == 2 for _, x in metrics)
    # a rerun reads the cache: nothing is loaded again
    again = choose_postprocess(["a", "b"], lambda i, p: pytest.fail("loaded again"), dust_sizes=(10, 300, 600),
                               plug_sizes=(0, 64, 512), cache=tmp_path / "c.json", **kw)
    assert (again["min_size"], again["plug_size"]) == (300, 64)


def test_choose_postprocess_keeps_the_best_so_far_at_the_deadline_and_the_defaults_before_any(tmp_path):
    import time

    from nx47_pipeline.model.search import choose_postprocess

    maps = _maps(np.random.default_rng(2))
    kw = dict(low=0.35, high=0.5, thin=False, closing_radius=(1, 1, 1), dust_sizes=(10, 300), plug_sizes=(0, 64),
              min_size=100, plug_size=0)
    said = []
    res = choose_postprocess(["a", "b"], lambda i, p: maps[i], deadline=0.0, on_deadline=said.append, **kw)
    assert (res["min_size"], res["plug_size"], res["score"]) == (100, 0, None) and not res["complete"]
    assert said and "stopped" in said[0]
    # the deadline passes once the first dust size is scored on both volumes: it is kept, plug 0
    def slow_load(i, p):
        return maps[i]

    deadline = time.monotonic() + 0.25

    def progress(d, t, what):
        if what.startswith("dust 10, plug 0: b"):  # this step lasts until the deadline has passed
            wait_until(lambda: time.monotonic() > deadline, 5, "the deadline", interval_s=0.01)

    res = choose_postprocess(["a", "b"], slow_load, deadline=deadline, on_progress=progress,
                             on_deadline=said.append, **kw)
    assert (res["min_size"], res["plug_size"]) == (10, 0) and not res["complete"]
    assert [(r["min_size"], r["plug_size"]) for r in res["scores"]] == [(10, 0)]


def test_a_single_candidate_is_returned_unscored():
    from nx47_pipeline.model.search import choose_postprocess

    res = choose_postprocess(["a"], lambda i, p: pytest.fail("nothing to score"), low=0.3, high=0.5, thin=False,
                             closing_radius=(1, 1, 1), dust_sizes=(500,), plug_sizes=(0,), min_size=100)
    assert (res["min_size"], res["plug_size"], res["score"]) == (500, 0, None)
    kw = dict(low=0.3, high=0.5, thin=False, closing_radius=(1, 1, 1), dust_sizes=(100,), plug_sizes=(0,),
              min_size=100)
    for name, bad in (("dust_sizes", ()), ("plug_sizes", (0, -64)), ("closing_radius", (1, 1)),
                      ("closing_radius", ((1, 1, 1), (1, 2, 2))), ("thin", "yes")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            choose_postprocess(["a"], lambda i, p: None, **{**kw, name: bad})


def test_the_planned_search_work_is_the_work_the_search_stage_reports(pinhole_case, tmp_path):
    """The planner's count (budget.search_units) and the search stage's
    progress total are one count: closing radii (a repeat counted once), the
    validation volumes searched and the dust / plug candidates included."""
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.model.search import search_units
    from nx47_pipeline.run import budget, orchestrator, stages
    from nx47_pipeline.run.context import Samples

    X, y, val = pinhole_case
    cfg = RunConfig(out_dir=str(tmp_path / "out"), console=False, telemetry=False, l1_grid=(1e-4,),
                    l2_grid=(1e-3,), threshold_grid=(0.5, 0.7), closing_radius_grid=(1, 1, 1, 2, 1, 1, 1, 1, 1),
                    dust_size_grid=(10, 5000), plug_size_grid=(0,), search_top_k=2, search_max_val_volumes=1,
                    feature_scales=(1.0, 2.0), min_component_voxels=10)
    ctx = orchestrator.make_context(cfg)
    totals = []
    rep = ctx.reporter(publish=False, progress=lambda d, t, **kw: totals.append(t))
    stages.search(ctx, rep, Samples(X, y, 0.0), val, tmp_path / "search", max_iter=20, deadline=None)
    planned = budget.search_units(cfg, n_val=len(val))
    # 1 fit; 1 volume searched x (2 pairs x 2 radii ranked + top 2 in full); 2 dust sizes on it
    assert planned == search_units(n_points=1, n_val=1, n_thresholds=2, n_radii=2, top_k=2, n_dust=2) == 9
    assert set(totals) == {planned}
    saved = json.loads((tmp_path / "search" / "results.json").read_text())
    assert {tuple(r["closing_radius"]) for r in saved["ranked"]} == {(1, 1, 1), (2, 1, 1)}
