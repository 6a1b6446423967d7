"""Tests of the local competition metric (nx47_pipeline.model.metric)."""

from __future__ import annotations

import json
import zipfile

import cc3d
import numpy as np
import pytest
import surface_distance as sd
import tifffile
from scipy import ndimage
from skimage.metrics import variation_of_information

from nx47_pipeline.cli.score import score_main, score_submission
from nx47_pipeline.model import metric as M


# --------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------


def _sheets(shape=(40, 40, 40), *, n=2, thickness=3, seed=0, shift=0.0):
    """Wavy papyrus-like sheets across the volume (label 1 values)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    out = np.zeros(shape, bool)
    for i in range(n):
        base = (i + 1) * shape[0] / (n + 1) + shift
        amp = rng.uniform(1.0, 3.0)
        fy, fx = rng.uniform(0.05, 0.2, size=2)
        surf = base + amp * np.sin(fy * y + rng.uniform(0, 6)) * np.cos(fx * x)
        out |= np.abs(z - surf) < thickness / 2
    return out


def _blobs(shape=(32, 32, 32), *, seed=0, fraction=0.1):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return field > np.quantile(field, 1 - fraction)


def _reference_sd(pred, gt, spacing=(1.0, 1.0, 1.0), tol=2.0):
    dists = sd.compute_surface_distances(gt, pred, spacing)
    return sd.compute_surface_dice_at_tolerance(dists, tol)


def _ball(shape, center, radius):
    g = np.indices(shape).astype(float)
    d2 = sum((g[i] - center[i]) ** 2 for i in range(3))
    return d2 <= radius**2


# --------------------------------------------------------------------------
# Surface Dice
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 0.7)])
def test_surface_dice_matches_surface_distance_on_random_blobs(seed, spacing):
    gt = _blobs(seed=seed)
    pred = _blobs(seed=seed + 100) | (np.roll(gt, seed % 3 + 1, axis=seed % 3))
    ref = _reference_sd(pred, gt, spacing)
    assert 0.0 < ref < 1.0
    assert M.surface_dice(pred, gt, spacing=spacing) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("shift", [0.0, 1.0, 1.6, 2.0, 2.5, 3.0, 4.0])
def test_surface_dice_matches_surface_distance_on_shifted_sheets(shift):
    gt = _sheets(seed=3)
    pred = _sheets(seed=3, shift=shift)
    pred[:, :5, :] = False  # a hole in the prediction
    ref = _reference_sd(pred, gt)
    got = M.surface_dice(pred, gt)
    assert got == pytest.approx(ref, abs=1e-6)


def test_surface_dice_matches_on_masks_touching_the_array_border():
    gt = np.zeros((24, 24, 24), bool)
    gt[0:3, :, :] = True
    pred = np.zeros_like(gt)
    pred[2:5, 4:, :20] = True
    pred[23, 23, 23] = True
    ref = _reference_sd(pred, gt)
    assert M.surface_dice(pred, gt) == pytest.approx(ref, abs=1e-6)


def test_surface_dice_tolerance_changes_result_like_reference():
    gt = _sheets(seed=5)
    pred = _sheets(seed=5, shift=2.0)
    for tol in (0.0, 1.0, 2.0, 3.0):
        ref = _reference_sd(pred, gt, tol=tol)
        assert M.surface_dice(pred, gt, tolerance=tol) == pytest.approx(ref, abs=1e-6)


def test_surface_dice_empty_cases():
    empty = np.zeros((16, 16, 16), bool)
    some = empty.copy()
    some[4:8, 4:8, 4:8] = True
    assert M.surface_dice(empty, empty) == 1.0
    assert M.surface_dice(some, empty) == 0.0
    assert M.surface_dice(empty, some) == 0.0
    assert M.surface_dice(some, some) == 1.0


def test_surface_dice_rejects_bad_arguments():
    a = np.zeros((8, 8, 8), bool)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        M.surface_dice(a, np.zeros((8, 8, 9), bool))
    with pytest.raises(ValueError, match="spacing"):
        M.surface_dice(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        M.surface_dice(a, a, tolerance=-1.0)


# --------------------------------------------------------------------------
# VOI
# --------------------------------------------------------------------------


def _direct_voi(pred, gt):
    lp = cc3d.connected_components(pred.astype(np.uint8), connectivity=26)
    lg = cc3d.connected_components(gt.astype(np.uint8), connectivity=26)
    union = pred | gt
    split, merge = variation_of_information(lg[union], lp[union])
    return split, merge


@pytest.mark.parametrize("seed", range(4))
def test_voi_matches_direct_scikit_image_computation(seed):
    gt = _sheets(seed=seed, n=3)
    pred = _sheets(seed=seed, n=3, shift=1.0)
    pred[:, 18:21, :] = False  # cut every sheet in two
    pred |= _blobs(shape=gt.shape, seed=seed, fraction=0.01)
    split, merge = M.voi_parts(pred, gt)
    ref_split, ref_merge = _direct_voi(pred, gt)
    assert split == pytest.approx(ref_split, abs=1e-9)
    assert merge == pytest.approx(ref_merge, abs=1e-9)
    assert split + merge > 0


def test_voi_split_and_merge_directions():
    gt = np.zeros((20, 20, 20), bool)
    gt[5, 2:18, 2:18] = True
    pred = gt.copy()
    pred[5, 9:11, :] = False  # one true sheet predicted as two pieces
    split, merge = M.voi_parts(pred, gt)
    assert split > 0 and merge == pytest.approx(0.0, abs=1e-12)
    split, merge = M.voi_parts(gt, pred)  # two true pieces predicted as one
    assert merge > 0 and split == pytest.approx(0.0, abs=1e-12)


def test_voi_diagonal_contact_is_one_component():
    gt = np.zeros((10, 10, 10), bool)
    gt[2, 2, 2] = gt[3, 3, 3] = True  # 26-connected, not 6-connected
    assert M.voi_parts(gt, gt) == (0.0, 0.0)
    split, merge = M.voi_parts(gt, gt, connectivity=6)
    assert split == 0.0 and merge == 0.0  # still identical labellings


def test_voi_score_transform_and_empty():
    empty = np.zeros((8, 8, 8), bool)
    assert M.voi_parts(empty, empty) == (0.0, 0.0)
    assert M.voi_score(0.0) == 1.0
    assert M.voi_score(2.0) == pytest.approx(1 / 1.6)
    assert M.voi_score(2.0, alpha=1.0) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="voi"):
        M.voi_score(-1.0)
    with pytest.raises(ValueError, match="connectivity"):
        M.voi_parts(empty, empty, connectivity=8)


# --------------------------------------------------------------------------
# Betti numbers and TopoScore
# --------------------------------------------------------------------------


def test_betti_numbers_of_hand_built_shapes():
    shape = (24, 24, 24)
    c = (11.5, 11.5, 11.5)
    ball = _ball(shape, c, 8)
    hollow = ball & ~_ball(shape, c, 5)
    g = np.indices(shape).astype(float) - 11.5
    ring = np.sqrt(g[1] ** 2 + g[2] ** 2)
    torus = (ring - 7) ** 2 + g[0] ** 2 <= 2.5**2
    sheets = np.zeros(shape, bool)
    sheets[6:8] = True
    sheets[15:17] = True
    holed = np.zeros(shape, bool)
    holed[10:12, 2:22, 2:22] = True
    holed[10:12, 9:14, 9:14] = False
    assert M.betti_numbers(ball) == (1, 0, 0)
    assert M.betti_numbers(hollow) == (1, 0, 1)
    assert M.betti_numbers(torus) == (1, 1, 0)
    assert M.betti_numbers(sheets) == (2, 0, 0)
    assert M.betti_numbers(holed) == (1, 1, 0)
    assert M.betti_numbers(np.zeros(shape, bool)) == (0, 0, 0)


def test_betti_numbers_of_shapes_with_several_loops():
    g = np.indices((32, 32, 32)).astype(float) - 15.5
    ring = np.sqrt(g[1] ** 2 + g[2] ** 2)
    d2 = (ring - 9) ** 2 + g[0] ** 2
    hollow_torus = (d2 <= 4.5**2) & (d2 > 2**2)
    assert M.betti_numbers(hollow_torus) == (1, 2, 1)
    plate = np.zeros((20, 20, 20), bool)
    plate[8:10, 2:18, 2:18] = True
    plate[8:10, 4:7, 4:7] = False
    plate[8:10, 11:15, 11:15] = False
    assert M.betti_numbers(plate) == (1, 2, 0)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_euler_characteristic_is_consistent_with_the_dual_complement(connectivity):
    # Alexander duality: b1 of the foreground equals b1 of the background with
    # the dual connectivity, i.e. chi(background) == 1 + chi(foreground).
    from skimage.measure import euler_number

    fg_conn, bg_conn = (1, 3) if connectivity == 6 else (3, 1)
    rng = np.random.default_rng(7)
    for density in (0.2, 0.35, 0.5, 0.65):
        fg = np.zeros((16, 16, 16), bool)
        fg[1:-1, 1:-1, 1:-1] = rng.random((14, 14, 14)) < density
        b0, b1, b2 = M.betti_numbers(fg, connectivity=connectivity)
        assert b1 >= 0 and b0 - b1 + b2 == euler_number(fg, connectivity=fg_conn)
        assert euler_number(~fg, connectivity=bg_conn) == 1 + (b0 - b1 + b2)


def test_betti_numbers_connectivity_pairs():
    m = np.zeros((6, 6, 6), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner contact only
    assert M.betti_numbers(m) == (2, 0, 0)  # default: foreground 6-connected
    assert M.betti_numbers(m, connectivity=26) == (1, 0, 0)
    # A cavity reached from outside only through a diagonal chain of
    # background voxels: open for a 26-connected background (default), a
    # string of separate cavities for a 6-connected one.
    block = np.ones((7, 7, 7), bool)
    for i in range(4):
        block[i, i, i] = False
    assert M.betti_numbers(block) == (1, 0, 0)
    assert M.betti_numbers(block, connectivity=26) == (1, 0, 3)
    with pytest.raises(ValueError, match="connectivity"):
        M.betti_numbers(m, connectivity=18)


def test_feature_counts_match_cubical_persistence_of_the_official_filtration():
    # The official TopoScore counts the finite persistence pairs of the
    # sublevel filtration of 1 - mask with voxels as vertices (Betti-Matching-3D).
    # gudhi computes the same persistence independently.
    gudhi = pytest.importorskip("gudhi")

    def gudhi_counts(mask):
        cc = gudhi.CubicalComplex(vertices=1.0 - mask.astype(float))
        cc.compute_persistence(homology_coeff_field=2)
        counts = [0, 0, 0]
        for dim, (birth, death) in cc.persistence():
            if np.isfinite(death) and death > birth:
                counts[dim] += 1
        return tuple(counts)

    rng = np.random.default_rng(11)
    for i in range(12):
        mask = rng.random((9, 10, 11)) < 0.15 + 0.05 * i
        assert M.topo_feature_counts(mask) == gudhi_counts(mask)
    ball = _ball((12, 12, 12), (5.5, 5.5, 5.5), 4)
    assert M.topo_feature_counts(ball) == gudhi_counts(ball) == (0, 0, 0)
    assert M.topo_feature_counts(np.zeros((5, 5, 5), bool)) == (0, 0, 0)


def test_feature_counts_drop_the_essential_component():
    two = np.zeros((12, 12, 12), bool)
    two[2:4] = True
    two[8:10] = True
    assert M.betti_numbers(two) == (2, 0, 0)
    assert M.topo_feature_counts(two) == (1, 0, 0)
    holed = np.zeros((12, 12, 12), bool)
    holed[5:7, 1:11, 1:11] = True
    holed[5:7, 4:7, 4:7] = False
    assert M.topo_feature_counts(holed) == (0, 1, 0)


def test_betti_numbers_cavity_touching_array_border_is_open():
    cube = np.ones((7, 7, 7), bool)
    cube[3, 3, 3] = False
    assert M.betti_numbers(cube) == (1, 0, 1)
    cube[0, 3, 3] = False  # a dent on the border is not a cavity
    assert M.betti_numbers(cube) == (1, 0, 1)


def test_topo_f1_official_rules():
    assert M.topo_f1(2, 3, 2) == pytest.approx(0.8)
    assert M.topo_f1(0, 3, 0) == pytest.approx(0.5 / 3.5)
    assert M.topo_f1(0, 0, 4) == 0.0
    assert M.topo_f1(0, 0, 0) is None


def test_topo_score_perfect_and_empty():
    gt = _sheets(shape=(32, 32, 32), seed=1)
    score, det = M.topo_score(gt, gt)
    assert score == 1.0
    assert det["method"] == M.TopoMethod.EXACT.value
    empty = np.zeros_like(gt)
    assert M.topo_score(empty, empty)[0] == 1.0


def _blobs_per_octant(shape, n=2):
    """``n`` separate 2x2x2 cubes inside every octant of ``shape``."""
    out = np.zeros(shape, bool)
    halves = [(0, s - s // 2) for s in shape]
    for z0 in (halves[0][0], halves[0][1]):
        for y0 in (halves[1][0], halves[1][1]):
            for x0 in (halves[2][0], halves[2][1]):
                for i in range(n):
                    z = z0 + 1 + 4 * i
                    out[z : z + 2, y0 + 1 : y0 + 3, x0 + 1 : x0 + 3] = True
    return out


def test_topo_score_false_positive_only_uses_half_rule():
    gt = np.zeros((32, 32, 32), bool)
    pred = gt.copy()
    pred[3:6, 3:6, 3:6] = True
    pred[9:12, 3:6, 3:6] = True  # two components in one octant, no GT
    score, det = M.topo_score(pred, gt)
    assert det["betti_pred"] == (1, 0, 0)  # one finite pair: 2 - 1 components
    assert det["f1"] == (pytest.approx(0.5 / 1.5), None, None)
    assert score == pytest.approx(0.5 / 1.5)


def test_topo_score_single_component_per_octant_counts_nothing():
    # Like the official metric: the oldest component of a block is an
    # essential class, not a persistence pair, so one blob per octant leaves
    # every dimension undefined and TopoScore is 1.
    gt = np.zeros((32, 32, 32), bool)
    pred = gt.copy()
    pred[3:6, 3:6, 3:6] = True
    assert M.topo_score(pred, gt)[0] == 1.0
    assert M.topo_score(gt, pred)[0] == 1.0


def test_topo_score_counts_per_octant_and_renormalises_weights():
    shape = (32, 32, 32)
    gt = _blobs_per_octant(shape, n=2)  # one finite dim-0 pair per octant
    pred = np.zeros(shape, bool)
    pred[1:3, 1:3, 1:3] = True
    pred[5:7, 1:3, 1:3] = True
    pred[9:11, 1:3, 1:3] = True  # three blobs in octant (0, 0, 0)
    pred[20:22, 2:14, 2:14] = True
    pred[20:22, 6:9, 6:9] = False  # a plate with a hole in octant (1, 0, 0)
    score, det = M.topo_score(pred, gt)
    assert det["betti_gt"] == (8, 0, 0)
    assert det["betti_pred"] == (2, 1, 0)
    assert det["matched"] == (1, 0, 0)
    f1_0 = 2 * 1 / (2 + 8)
    f1_1 = 0.5 / 1.5
    assert det["f1"] == (pytest.approx(f1_0), pytest.approx(f1_1), None)
    assert score == pytest.approx((0.34 * f1_0 + 0.33 * f1_1) / (0.34 + 0.33))


def test_topo_score_accepts_a_custom_matcher_and_checks_it():
    gt = _blobs_per_octant((33, 32, 32), n=2)
    calls = []

    def no_match(p, g):
        calls.append((p.shape, g.shape))
        return (0, 0, 0)

    score, det = M.topo_score(gt, gt, matcher=no_match)
    # odd axis: the first half gets the extra voxel, as in the official code
    assert len(calls) == 8 and calls[0] == ((17, 16, 16), (17, 16, 16))
    assert calls[-1] == ((16, 16, 16), (16, 16, 16))
    assert det["method"] == "no_match" and score == 0.0
    assert M.topo_score(gt, gt)[0] == 1.0

    with pytest.raises(ValueError, match="matcher returned"):
        M.topo_score(gt, gt, matcher=lambda p, g: (99, 0, 0))


# --------------------------------------------------------------------------
# score_volume
# --------------------------------------------------------------------------


def _label(shape=(40, 40, 40), seed=0):
    """Label volume: sheets = 1, a 3-voxel ignore border and an ignored slab."""
    lab = _sheets(shape, seed=seed).astype(np.uint8)
    lab[:3] = 2
    lab[-3:] = 2
    lab[:, :3] = 2
    lab[:, -3:] = 2
    lab[:, :, :3] = 2
    lab[:, :, -3:] = 2
    lab[:, 25:32, :] = 2
    return lab


def test_perfect_prediction_scores_one():
    lab = _label()
    pred = (lab == 1).astype(np.uint8)
    vs = M.score_volume(pred, lab)
    assert vs.score == pytest.approx(1.0)
    assert vs.surface_dice == 1.0 and vs.voi_score == 1.0 and vs.topo == 1.0
    assert vs.topo_method == M.TopoMethod.EXACT.value


def test_ignored_voxels_do_not_change_the_score():
    lab = _label(seed=1)
    pred = _sheets(lab.shape, seed=1, shift=1.0).astype(np.uint8)
    noisy = pred.copy()
    noisy[lab == 2] = 1  # anything in the ignored region is irrelevant
    a = M.score_volume(pred, lab)
    b = M.score_volume(noisy * 255, lab)
    assert a == b
    assert 0.0 < a.score < 1.0


def test_ignore_means_prediction_and_gt_zeroed_where_label_is_two():
    lab = _label(seed=2)
    pred = _sheets(lab.shape, seed=2, shift=2.0)
    vs = M.score_volume(pred, lab)
    p = pred & (lab != 2)
    g = lab == 1
    assert vs.surface_dice == pytest.approx(_reference_sd(p, g), abs=1e-6)
    split, merge = _direct_voi(p, g)
    assert vs.voi == pytest.approx(split + merge, abs=1e-9)
    assert vs.voi_score == pytest.approx(1 / (1 + 0.3 * (split + merge)))
    topo, _ = M.topo_score(p, g)
    expect = 0.3 * topo + 0.35 * vs.surface_dice + 0.35 * vs.voi_score
    assert vs.score == pytest.approx(expect)


def test_all_ignored_and_empty_cases():
    shape = (24, 24, 24)
    all_ignored = np.full(shape, 2, np.uint8)
    anything = np.ones(shape, np.uint8)
    assert M.score_volume(anything, all_ignored).score == 1.0
    empty_label = np.zeros(shape, np.uint8)
    assert M.score_volume(np.zeros(shape, np.uint8), empty_label).score == 1.0
    # all-foreground prediction where nothing is true: SD 0, but (as in the
    # official metric) one component per octant counts no topological
    # feature and one predicted component over the union has VOI 0.
    fp = M.score_volume(anything, empty_label)
    assert fp.surface_dice == 0.0
    assert fp.topo == 1.0 and fp.voi_score == 1.0
    assert fp.score == pytest.approx(0.65)
    # nothing predicted where something is true
    lab = _label()
    miss = M.score_volume(np.zeros(lab.shape, np.uint8), lab)
    assert miss.surface_dice == 0.0 and miss.topo == 0.0
    assert 0.0 < miss.voi_score < 1.0


def test_float_prediction_nan_is_background_and_nonzero_is_foreground():
    lab = _label(seed=4)
    mask = lab == 1
    pred = np.where(mask, 0.3, np.nan).astype(np.float32)
    assert M.score_volume(pred, lab).score == 1.0


def test_score_volume_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        M.score_volume(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)))


def test_volume_score_to_dict_uses_voi_score_under_voi():
    lab = _label(seed=3)
    pred = _sheets(lab.shape, seed=3, shift=1.0)
    d = M.score_volume(pred, lab).to_dict()
    assert {"score", "surface_dice", "voi", "topo", "voi_raw"} <= set(d)
    assert d["voi"] == pytest.approx(1 / (1 + 0.3 * d["voi_raw"]))
    json.dumps(d)


# --------------------------------------------------------------------------
# Submissions and CLI
# --------------------------------------------------------------------------


@pytest.fixture()
def dataset(tmp_path):
    labels = tmp_path / "labels"
    preds = tmp_path / "pred"
    labels.mkdir()
    preds.mkdir()
    for i, vid in enumerate(["101", "102", "103"]):
        lab = _label(shape=(32, 32, 32), seed=i)
        tifffile.imwrite(labels / f"{vid}.tif", lab, compression="lzw")
        if vid != "103":
            pred = (lab == 1) if vid == "101" else _sheets((32, 32, 32), seed=i, shift=1)
            tifffile.imwrite(preds / f"{vid}.tif", pred.astype(np.uint8), compression="lzw")
    return labels, preds


def test_score_submission_folder_with_missing_prediction(dataset):
    labels, preds = dataset
    seen = []
    res = score_submission(
        preds, labels, on_progress=lambda d, t, w: seen.append((d, t, w))
    )
    assert res["missing"] == ["103"]
    assert res["per_volume"]["101"]["score"] == pytest.approx(1.0)
    assert res["per_volume"]["103"]["score"] == 0.0
    s102 = res["per_volume"]["102"]["score"]
    assert 0 < s102 < 1
    assert res["mean"] == pytest.approx((1.0 + s102 + 0.0) / 3)
    assert res["topo_method"] == M.TopoMethod.EXACT.value
    assert seen[-1] == (3, 3, "103")


def test_score_submission_zip_and_unreadable_file(dataset, tmp_path):
    labels, preds = dataset
    zpath = tmp_path / "submission.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(preds / "101.tif", "101.tif")
        zf.writestr("102.tif", b"not a tiff")
        zf.write(preds / "101.tif", "nested/103.tif")  # not at the root
    res = score_submission(zpath, labels)
    assert res["per_volume"]["101"]["score"] == pytest.approx(1.0)
    assert [e["id"] for e in res["errors"]] == ["102"]
    assert res["per_volume"]["102"]["score"] == 0.0
    assert res["missing"] == ["103"]


def test_score_submission_wrong_shape_is_an_error_not_a_crash(dataset):
    labels, preds = dataset
    tifffile.imwrite(preds / "103.tif", np.zeros((16, 32, 32), np.uint8))
    res = score_submission(preds, labels)
    assert res["errors"][0]["id"] == "103"
    assert "(16, 32, 32)" in res["errors"][0]["error"]


def test_score_submission_unreadable_label_names_the_label_file(dataset):
    labels, preds = dataset
    (labels / "102.tif").write_bytes(b"garbage")
    res = score_submission(preds, labels)
    assert res["per_volume"]["101"]["score"] == pytest.approx(1.0)
    (err,) = res["errors"]
    assert err["id"] == "102" and str(labels / "102.tif") in err["error"]


def test_score_submission_missing_paths(tmp_path, dataset):
    labels, preds = dataset
    with pytest.raises(FileNotFoundError, match="nope"):
        score_submission(tmp_path / "nope", labels)
    with pytest.raises(FileNotFoundError, match="nolabels"):
        score_submission(preds, tmp_path / "nolabels")


def test_score_volumes_averages_pairs():
    lab = _label(shape=(32, 32, 32))
    good = (lab == 1).astype(np.uint8)
    res = M.score_volumes([("a", good, lab), ("b", np.zeros((8, 8, 8)), lab)])
    assert res["per_volume"]["a"]["score"] == pytest.approx(1.0)
    assert res["errors"][0]["id"] == "b"
    assert res["mean"] == pytest.approx(0.5)


def test_score_main_json_and_table(dataset, capsys):
    labels, preds = dataset
    assert score_main(["--pred", str(preds), "--labels", str(labels), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"mean", "per_volume", "topo_method", "missing", "errors"}
    assert set(out["per_volume"]["102"]) >= {"score", "surface_dice", "voi", "topo"}
    assert score_main(["--pred", str(preds), "--labels", str(labels)]) == 0
    table = capsys.readouterr().out
    assert "mean" in table and "102" in table and "betti matching (exact)" in table
    assert "approximation" not in table
    # the approximation only by name, and then it says so
    assert score_main(["--pred", str(preds), "--labels", str(labels), "--json",
                         "--topo-method", "approx"]) == 0
    assert json.loads(capsys.readouterr().out)["topo_method"] == M.APPROX_TOPO_METHOD


def test_score_main_bad_arguments(tmp_path, capsys):
    assert score_main(["--pred", str(tmp_path / "x"), "--labels", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert score_main(["--labels", str(tmp_path)]) == 2
