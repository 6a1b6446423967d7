"""Exact Betti matching equals the hosts' matcher, and TopoScore uses it.

The fixture ``tests/fixtures/betti_oracle`` holds binary pairs with the
counts of Betti-Matching-3D (the hosts' matcher), whole and per octant; its
README says how it was made.  CI never builds the oracle: these tests only
read its figures.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cc3d
import numpy as np
import pytest
import tifffile
from skimage.metrics import variation_of_information
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances

from nx47_pipeline.cli.score import score_main
from nx47_pipeline.model import metric as M
from nx47_pipeline.model.betti_matching import betti_matching_counts

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "betti_oracle"


def _load():
    doc = json.loads((FIXTURE / "counts.json").read_text())
    packed = np.load(FIXTURE / "volumes.npz")
    out = []
    for i, case in enumerate(doc["cases"]):
        shape = tuple(case["shape"])
        n = int(np.prod(shape))
        p = np.unpackbits(packed[f"p{i}"], count=n).astype(bool).reshape(shape)
        g = np.unpackbits(packed[f"g{i}"], count=n).astype(bool).reshape(shape)
        out.append((case, p, g))
    return out


@pytest.fixture(scope="module")
def corpus():
    return _load()


def _octant_slices(shape):
    cuts = [(slice(0, (n + 1) // 2), slice((n + 1) // 2, n)) for n in shape]
    return [(a, b, c) for a in cuts[0] for b in cuts[1] for c in cuts[2]]


def _hosts_topo(sums) -> float:
    """TopoScore from summed (m, p, g) per dimension, the hosts' rules."""
    f1, w = [], []
    for k, (m, p, g) in enumerate(sums):
        if p + g == 0:
            continue
        f1.append(2.0 * m / (p + g) if g else 0.5 / (p + 0.5))
        w.append(M.TOPO_WEIGHTS[k])
    if not f1:
        return 1.0
    return float(np.dot(w, f1) / np.sum(w))


def test_the_corpus_covers_the_cases_the_issue_names(corpus):
    cats = Counter(case["category"] for case, _, _ in corpus)
    assert len(corpus) >= 200
    for needed in ("random_blobs", "sheets_pinholes", "touching_sheets", "cavities",
                   "octant_crossing", "empty_full", "demo"):
        assert cats[needed] > 0, needed
    assert any(min(case["shape"]) <= 3 for case, _, _ in corpus)  # tiny blocks
    assert any(len({*case["shape"]}) == 3 and any(s % 2 for s in case["shape"])
               for case, _, _ in corpus)  # odd, anisotropic sizes


def test_the_corpus_needs_real_matching_in_every_dimension(corpus):
    # Pairs where the exact matching finds fewer matches than the Betti
    # numbers allow: the approximation (min of counts) is wrong on each.
    strict = [0, 0, 0]
    for case, _, _ in corpus:
        for k, (m, p, g) in enumerate(case["sum"]):
            strict[k] += m < min(p, g)
    assert strict[0] >= 50 and strict[1] >= 50 and strict[2] >= 20, strict


def test_counts_equal_the_oracle_on_every_pair_whole_and_per_octant(corpus):
    wrong = []
    for case, p, g in corpus:
        if betti_matching_counts(p, g).tolist() != case["whole"]:
            wrong.append(("whole", case["name"]))
        for i, box in enumerate(_octant_slices(p.shape)):
            po, go = p[box], g[box]
            got = betti_matching_counts(po, go).tolist() if po.size else [[0, 0, 0]] * 3
            if got != case["octants"][i]:
                wrong.append((f"octant {i}", case["name"]))
    assert not wrong, wrong[:10]


def test_topo_score_sums_the_octants_like_the_leaderboard(corpus):
    for case, p, g in corpus:
        score, det = M.topo_score(p, g)
        sums = case["sum"]
        assert det["matched"] == tuple(s[0] for s in sums), case["name"]
        assert det["betti_pred"] == tuple(s[1] for s in sums), case["name"]
        assert det["betti_gt"] == tuple(s[2] for s in sums), case["name"]
        assert score == pytest.approx(_hosts_topo(sums), abs=1e-12), case["name"]
        assert det["method"] == M.TopoMethod.EXACT.value


def _hosts_score(p: np.ndarray, g: np.ndarray, topo: float) -> float:
    """The leaderboard's formula with the reference libraries for SD and VOI."""
    if not p.any() and not g.any():
        sd, voi = 1.0, 0.0
    else:
        if p.any() and g.any():
            dist = compute_surface_distances(g, p, (1.0, 1.0, 1.0))
            sd = compute_surface_dice_at_tolerance(dist, 2.0)
        else:
            sd = 0.0
        union = p | g
        lp = cc3d.connected_components(p.astype(np.uint8), connectivity=26)
        lg = cc3d.connected_components(g.astype(np.uint8), connectivity=26)
        split, merge = variation_of_information(lg[union], lp[union])
        voi = split + merge
    return float(np.clip(0.30 * topo + 0.35 * sd + 0.35 / (1 + 0.3 * voi), 0, 1))


def test_nx47_score_equals_the_oracle_based_leaderboard_score_on_demo_volumes(corpus, tmp_path, capsys):
    demo = [(case, p, g) for case, p, g in corpus if case["category"] == "demo"]
    assert len(demo) >= 3
    preds, labels = tmp_path / "pred", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    expected = {}
    for case, p, g in demo:
        vid = case["name"]
        tifffile.imwrite(preds / f"{vid}.tif", p.astype(np.uint8), compression="lzw")
        tifffile.imwrite(labels / f"{vid}.tif", g.astype(np.uint8), compression="lzw")
        expected[vid] = _hosts_score(p, g, _hosts_topo(case["sum"]))
    assert score_main(["--pred", str(preds), "--labels", str(labels), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["topo_method"] == M.TopoMethod.EXACT.value
    for vid, want in expected.items():
        assert out["per_volume"][vid]["score"] == pytest.approx(want, abs=1e-6), vid
    assert out["mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)


def test_fragments_inside_one_union_component_do_not_each_match():
    label = np.zeros((16, 16, 16), bool)
    label[2:7, 2:7, 2:7] = True
    label[10:14, 10:14, 10:14] = True
    pred = np.zeros_like(label)
    pred[2:4, 2:7, 2:7] = True  # two fragments, both inside the first cube
    pred[5:7, 2:7, 2:7] = True
    counts = betti_matching_counts(pred, label)
    assert counts[0].tolist() == [0, 1, 1]  # one feature each, not matched
    assert M.betti_min_matcher(pred, label)[0] == 1  # what the approximation claims


def _ring(z: int, y: int, x: int, shape=(16, 16, 16), r: int = 3) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[z, y - r:y + r + 1, x - r:x + r + 1] = True
    m[z, y - r + 1:y + r, x - r + 1:x + r] = False
    return m


def test_a_tunnel_matches_only_where_the_rings_meet():
    label = _ring(4, 5, 5)
    assert betti_matching_counts(_ring(10, 10, 10), label)[1].tolist() == [0, 1, 1]
    assert betti_matching_counts(_ring(5, 5, 5), label)[1].tolist() == [1, 1, 1]


def test_a_cavity_matches_only_the_cavity_it_shares():
    label = np.zeros((12, 12, 12), bool)
    label[1:6, 1:6, 1:6] = True
    label[3, 3, 3] = False  # one cavity
    moved = np.roll(label, 5, axis=2)
    assert betti_matching_counts(label, label)[2].tolist() == [1, 1, 1]
    assert betti_matching_counts(moved, label)[2].tolist() == [0, 1, 1]


def test_counts_refuse_bad_shapes_naming_them():
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        betti_matching_counts(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="3D"):
        betti_matching_counts(np.zeros((4, 4)), np.zeros((4, 4)))
    assert betti_matching_counts(np.zeros((3, 3, 3)), np.zeros((3, 3, 3))).sum() == 0


def test_the_approximation_is_only_used_when_named():
    label = _ring(2, 3, 3, r=2)  # two rings in the same octant, apart
    pred = _ring(6, 3, 3, r=2)
    exact, det = M.topo_score(pred, label)
    approx, det_a = M.topo_score(pred, label, method="approx")
    assert det["method"] == M.TopoMethod.EXACT.value and exact == 0.0
    assert det_a["method"] == M.APPROX_TOPO_METHOD and approx == 1.0
    with pytest.raises(ValueError, match="topo_method 'nearly'"):
        M.topo_score(pred, label, method="nearly")


def test_octants_matched_in_threads_give_the_same_score(corpus):
    case, p, g = max(corpus, key=lambda c: sum(m < min(pp, gg) for m, pp, gg in c[0]["sum"]))
    one = M.topo_score(p, g, threads=1)
    assert M.topo_score(p, g, threads=4) == one
    assert one[1]["matched"] == tuple(s[0] for s in case["sum"])
    with pytest.raises(ValueError, match="threads must be >= 1"):
        M.topo_score(p, g, threads=0)


def test_scoring_reports_progress_through_the_octants():
    label = _ring(2, 3, 3, r=2)
    seen = []
    vs = M.score_volume(_ring(6, 3, 3, r=2).astype(np.uint8), label.astype(np.uint8),
                        on_progress=lambda done, total, what: seen.append((done, total, what)))
    # one report after each part; between them, reports as the parts' steps begin
    ends = [(d, what) for d, _, what in seen if ":" not in what]
    assert [d for d, _ in ends] == list(range(1, 11)) and {t for _, t, _ in seen} == {10}
    assert ends[0][1] == "SurfaceDice" and ends[-1][1] == "TopoScore octant 8/8"
    assert [what for d, _, what in seen][:4] == ["SurfaceDice: surfaces", "SurfaceDice: distances to the prediction",
                                                 "SurfaceDice: distances to the label", "SurfaceDice"]
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)  # never backwards
    assert vs.topo_method == M.TopoMethod.EXACT.value
