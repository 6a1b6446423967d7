"""The U-Net's own hysteresis pair is chosen by the competition score on its
validation maps, and the validation masks and scores follow the choice."""

import json

import numpy as np
import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.discovery import VolumeRecord
from nx47_pipeline.io.volumes import read_volume, write_volume
from nx47_pipeline.model.metric import score_volume
from nx47_pipeline.model.postprocess import postprocess, probability_to_uint8
from nx47_pipeline.run import orchestrator, stages
from nx47_pipeline.run.context import PostDefaults

SHAPE = (24, 40, 40)


def _volume(tmp_path, i, z):
    """A labelled sheet at ``z`` and a U-Net map that is sure of the sheet
    (0.95) and half-sure of a thick halo around it (0.72)."""
    label = np.zeros(SHAPE, np.uint8)
    label[z] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[z - 3:z + 4] = 0.72
    prob[z] = 0.95
    image = (label * 200 + 20).astype(np.uint8)
    img_p, lab_p = tmp_path / "img" / f"v{i}.tif", tmp_path / "lab" / f"v{i}.tif"
    write_volume(img_p, image)
    write_volume(lab_p, label)
    return VolumeRecord(f"v{i}", img_p, lab_p, SHAPE, "s0", "train"), prob, label


@pytest.fixture()
def setup(tmp_path):
    cfg = RunConfig(out_dir=str(tmp_path / "out"), console=False, min_component_voxels=10)
    ctx = orchestrator.make_context(cfg)
    dest = tmp_path / "out" / "val"
    best = {"low": 0.55, "high": 0.7}
    val, scores, labels = [], {}, {}
    for i, z in enumerate((8, 14)):
        rec, prob, label = _volume(tmp_path, i, z)
        val.append(rec)
        labels[rec.id] = label
        write_volume(dest / f"{rec.id}_prob.tif", probability_to_uint8(prob))
        mask = postprocess(prob, low=best["low"], high=best["high"], closing_radius=cfg.closing_radius,
                           min_size=cfg.min_component_voxels)
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": score_volume(mask, label).score}
    return ctx, dest, best, val, scores, labels


def test_a_higher_pair_that_scores_better_is_chosen_and_the_validation_masks_follow_it(setup):
    ctx, dest, best, val, scores, labels = setup
    pair, new = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, scores, deadline=None)
    # only a low threshold above the halo's 0.72 keeps the sheet alone
    assert pair is not None and pair["low"] > 0.72 and pair["high"] <= 0.95
    for rec in val:
        mask = read_volume(dest / f"{rec.id}.tif", kind="label")
        assert np.array_equal(mask, labels[rec.id])  # the thin sheet, not the halo
        assert new[rec.id]["score"] > scores[rec.id]["score"]
        assert json.loads((dest / f"{rec.id}.json").read_text())["score"] == pytest.approx(new[rec.id]["score"])
    record = json.loads((dest / "unet_thresholds.json").read_text())
    assert record["chosen"] == pytest.approx([pair["low"], pair["high"]])
    # every pair with and without thin-surface extraction; on a one-voxel sheet thinning changes nothing,
    # and a tie keeps the cheaper post-processing
    radii = ctx.config.closing_radii()
    assert len(radii) == 3 and len(record["scores"]) == 2 * len(stages.UNET_THRESHOLD_GRID) * len(radii)
    assert pair["thin"] is False and record["chosen_thin"] is False
    # closing a plane changes nothing either: the tie keeps the first radius
    assert pair["closing_radius"] == list(radii[0]) == record["chosen_closing_radius"]
    # a resumed run keeps the recorded choice without scoring again
    again, same = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, new, deadline=None)
    assert again["low"] == pytest.approx(pair["low"]) and same == new


def test_the_search_pair_stays_when_no_other_pair_scores_better(setup):
    ctx, dest, _, val, scores, _ = setup
    best = {"low": 0.75, "high": 0.9}  # already the sheet alone
    for rec in val:
        mask = postprocess(np.asarray(read_volume(dest / f"{rec.id}_prob.tif"), np.float32) / 255.0,
                           low=0.75, high=0.9, closing_radius=ctx.config.closing_radius,
                           min_size=ctx.config.min_component_voxels)
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": 1.0}
    before = {rec.id: read_volume(dest / f"{rec.id}.tif", kind="label") for rec in val}
    pair, new = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, scores, deadline=None)
    assert pair is None and new == scores
    for rec in val:
        assert np.array_equal(read_volume(dest / f"{rec.id}.tif", kind="label"), before[rec.id])


def test_an_imported_models_sweep_starts_from_its_bundles_post_processing_and_records_apart(setup):
    """:data:`~nx47_pipeline.run.stages.MODEL_SWEEP` (a run with an nnU-Net bundle): the bundle's
    0.5 / 0.5 at its defaults (closing radius and dust size, not the config's) is the start; pairs,
    thinning and the config's radii are varied; it records to ``model_thresholds.json`` with METRIC
    ``model_threshold_score``."""
    ctx, dest, _, val, scores, labels = setup
    post = PostDefaults(closing_radius=(0, 1, 1), min_size=7)
    sweep = stages.MODEL_SWEEP
    assert sweep.vary and sweep.record == "model_thresholds.json" and sweep.cache == "model_postprocess.json"
    best = {"low": 0.5, "high": 0.5}  # an nnU-Net bundle's default: its argmax
    for rec in val:
        prob = np.asarray(read_volume(dest / f"{rec.id}_prob.tif"), np.float32) / 255.0
        mask = postprocess(prob, low=0.5, high=0.5, closing_radius=(0, 1, 1), min_size=7)
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": score_volume(mask, labels[rec.id]).score}
    metrics = []
    rep = ctx.reporter()
    rep.metric = lambda name, value, **extra: metrics.append((str(name), value, extra))
    choice, new = stages.sweep_thresholds(ctx, rep, best, val, dest, scores, deadline=None, sweep=sweep,
                                         defaults=post)
    # the halo (0.72) is above 0.5: only a higher pair keeps the sheet alone
    assert choice is not None and choice["low"] > 0.72
    assert not (dest / "unet_thresholds.json").exists()
    record = json.loads((dest / "model_thresholds.json").read_text())
    assert record["search_pair"] == [0.5, 0.5] and record["search_closing_radius"] == [0, 1, 1]
    assert record["search_min_size"] == 7
    radii = ctx.config.closing_radii()
    # every pair x thinning x radius, and the bundle's own choice
    assert len(record["scores"]) == 2 * len(stages.UNET_THRESHOLD_GRID) * len(radii) + 1
    assert {(r["low"], r["high"], tuple(r["closing_radius"]), r["min_size"]) for r in record["scores"]} >= {
        (0.5, 0.5, (0, 1, 1), 7)}
    swept = [x for n, _, x in metrics if n == "model_threshold_score"]
    assert len(swept) == len(record["scores"]) and {x["thin"] for x in swept} == {False, True}
    assert all(x["model"] == "nnunet" for n, _, x in metrics if n == "postprocess_score")
    for rec in val:
        assert np.array_equal(read_volume(dest / f"{rec.id}.tif", kind="label"), labels[rec.id])
        assert new[rec.id]["score"] > scores[rec.id]["score"]
    # a resumed run reads its record back
    again, _ = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, new, deadline=None, sweep=sweep,
                                      defaults=post)
    assert again == choice


def test_a_passed_deadline_keeps_the_search_pair(setup):
    ctx, dest, best, val, scores, _ = setup
    pair, new = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, scores, deadline=0.0)
    assert pair is None and new == scores


def test_thinning_is_chosen_when_no_pair_can_cut_a_thick_confident_band(tmp_path):
    """Every threshold of the grid keeps a 7-voxel band around the sheet (the
    map is above 0.9 across it); non-maximum suppression along the normal
    keeps the ridge and one voxel each side, which scores higher."""
    cfg = RunConfig(out_dir=str(tmp_path / "out"), console=False, min_component_voxels=10)
    ctx = orchestrator.make_context(cfg)
    dest = tmp_path / "out" / "val"
    best = {"low": 0.55, "high": 0.7, "thin": False}
    val, scores = [], {}
    for i, z in enumerate((8, 14)):
        rec, _, label = _volume(tmp_path, i, z)
        prob = np.zeros(SHAPE, np.float32)
        for dz in range(-3, 4):
            prob[z + dz] = 0.96 - 0.01 * abs(dz)
        val.append(rec)
        write_volume(dest / f"{rec.id}_prob.tif", probability_to_uint8(prob))
        mask = postprocess(prob, low=0.55, high=0.7, closing_radius=cfg.closing_radius, min_size=10)
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": score_volume(mask, label).score}
    choice, new = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, scores, deadline=None)
    assert choice is not None and choice["thin"] is True
    for rec in val:
        mask = read_volume(dest / f"{rec.id}.tif", kind="label")
        assert mask.sum(axis=(1, 2)).astype(bool).sum() == 3  # the ridge and one voxel each side
        assert new[rec.id]["score"] > scores[rec.id]["score"]
    record = json.loads((dest / "unet_thresholds.json").read_text())
    assert record["chosen_thin"] is True
    # a resumed run returns the recorded choice, thin included
    again, _ = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, new, deadline=None)
    assert again["thin"] is True and again["high"] == pytest.approx(choice["high"])


def test_the_smaller_closing_radius_is_chosen_where_the_larger_merges_close_sheets(tmp_path):
    """Two sheets 4 voxels apart along y: closing with a y radius of 2 fills
    the 3-voxel gap between them and makes one slab; a radius of 1 keeps them
    apart.  The sweep picks (1, 1, 1) and the validation masks follow it."""
    cfg = RunConfig(out_dir=str(tmp_path / "out"), console=False, min_component_voxels=10,
                    closing_radius_grid=(1, 2, 2, 1, 1, 1))
    ctx = orchestrator.make_context(cfg)
    dest = tmp_path / "out" / "val"
    best = {"low": 0.55, "high": 0.7, "thin": False, "closing_radius": [1, 2, 2]}
    val, scores, labels = [], {}, {}
    for i, y in enumerate((12, 20)):
        label = np.zeros(SHAPE, np.uint8)
        label[:, y] = 1
        label[:, y + 4] = 1
        prob = np.where(label == 1, 0.95, 0.02).astype(np.float32)
        img_p, lab_p = tmp_path / "img" / f"v{i}.tif", tmp_path / "lab" / f"v{i}.tif"
        write_volume(img_p, (label * 200 + 20).astype(np.uint8))
        write_volume(lab_p, label)
        rec = VolumeRecord(f"v{i}", img_p, lab_p, SHAPE, "s0", "train")
        val.append(rec)
        labels[rec.id] = label
        write_volume(dest / f"{rec.id}_prob.tif", probability_to_uint8(prob))
        mask = postprocess(prob, low=0.55, high=0.7, closing_radius=(1, 2, 2), min_size=10)
        assert mask[:, y + 2].all()  # merged into one slab
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": score_volume(mask, label).score}
    choice, new = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, scores, deadline=None)
    assert choice is not None and choice["closing_radius"] == [1, 1, 1]
    for rec in val:
        assert np.array_equal(read_volume(dest / f"{rec.id}.tif", kind="label"), labels[rec.id])
        assert new[rec.id]["score"] > scores[rec.id]["score"]
    record = json.loads((dest / "unet_thresholds.json").read_text())
    assert record["chosen_closing_radius"] == [1, 1, 1] and record["search_closing_radius"] == [1, 2, 2]
    # a resumed run returns the recorded radius without scoring again
    again, _ = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, new, deadline=None)
    assert again["closing_radius"] == [1, 1, 1]


def test_the_sweep_also_chooses_dust_and_plug_sizes_and_the_validation_masks_follow_them(tmp_path):
    """A sure sheet with a 3x3 hole that closing (1, 1, 1) leaves open and a
    196-voxel blob of debris: the sweep keeps the search's pair and radius
    but chooses the dust size that removes the blob and the plug size that
    fills the hole; the masks, scores and record follow."""
    from nx47_pipeline.model.metric import betti_numbers

    cfg = RunConfig(out_dir=str(tmp_path / "out"), console=False, min_component_voxels=10,
                    closing_radius_grid=(1, 1, 1), dust_size_grid=(10, 300), plug_size_grid=(0, 64))
    ctx = orchestrator.make_context(cfg)
    dest = tmp_path / "out" / "val"
    best = {"low": 0.75, "high": 0.9, "thin": False, "closing_radius": [1, 1, 1], "min_size": 10, "plug_size": 0}
    val, scores, labels = [], {}, {}
    for i in range(2):
        label = np.zeros(SHAPE, np.uint8)
        label[12, 2:38, 2:38] = 1
        prob = np.where(label == 1, 0.95, 0.02).astype(np.float32)
        prob[12, 18:21, 18:21] = 0.02
        prob[1:5, 1:8, 30:37] = 0.95
        img_p, lab_p = tmp_path / "img" / f"v{i}.tif", tmp_path / "lab" / f"v{i}.tif"
        write_volume(img_p, (label * 200 + 20).astype(np.uint8))
        write_volume(lab_p, label)
        rec = VolumeRecord(f"v{i}", img_p, lab_p, SHAPE, "s0", "train")
        val.append(rec)
        labels[rec.id] = label
        write_volume(dest / f"{rec.id}_prob.tif", probability_to_uint8(prob))
        mask = postprocess(prob, low=0.75, high=0.9, closing_radius=(1, 1, 1), min_size=10)
        assert betti_numbers(mask)[:2] == (2, 1)  # the blob apart, the hole open
        write_volume(dest / f"{rec.id}.tif", mask)
        scores[rec.id] = {"score": score_volume(mask, label).score}
    metrics = []
    rep = ctx.reporter()
    rep.metric = lambda name, value, **extra: metrics.append((str(name), value, extra))
    choice, new = stages.sweep_thresholds(ctx, rep, best, val, dest, scores, deadline=None)
    assert choice is not None and (choice["min_size"], choice["plug_size"]) == (300, 64)
    assert choice["closing_radius"] == [1, 1, 1] and choice["high"] == pytest.approx(0.9)
    for rec in val:
        mask = read_volume(dest / f"{rec.id}.tif", kind="label")
        assert np.array_equal(mask, labels[rec.id])  # the sheet alone, its hole plugged
        assert new[rec.id]["score"] > scores[rec.id]["score"]
    record = json.loads((dest / "unet_thresholds.json").read_text())
    assert (record["chosen_min_size"], record["chosen_plug_size"]) == (300, 64)
    assert (record["search_min_size"], record["search_plug_size"]) == (10, 0)
    assert {(r["min_size"], r["plug_size"]) for r in record["postprocess_scores"]} == {(10, 0), (300, 0), (300, 64)}
    assert choice["score"] == pytest.approx(record["chosen_score"])
    post = [x for n, _, x in metrics if n == "postprocess_score"]
    assert {(x["min_size"], x["plug_size"]) for x in post} == {(10, 0), (300, 0), (300, 64)}
    assert all(x["model"] == "unet" for x in post)
    assert all("min_size" in x and "plug_size" in x for n, _, x in metrics if n == "unet_threshold_score")
    # a resumed run returns the recorded sizes without scoring again
    again, _ = stages.sweep_thresholds(ctx, ctx.reporter(), best, val, dest, new, deadline=None)
    assert (again["min_size"], again["plug_size"]) == (300, 64) and again["score"] == pytest.approx(choice["score"])
    # a record from before the dust / plug choice resumes with the run's dust size and no plugging
    old = {k: v for k, v in record.items() if "min_size" not in k and "plug_size" not in k and k != "chosen_score"}
    (dest / "unet_thresholds.json").write_text(json.dumps(old))
    legacy, _ = stages.sweep_thresholds(ctx, ctx.reporter(), {k: best[k] for k in ("low", "high", "thin",
                                                                                  "closing_radius")},
                                       val, dest, new, deadline=None)
    assert legacy is None  # the recorded choice is the search's at the run's dust size 10, no plugging
