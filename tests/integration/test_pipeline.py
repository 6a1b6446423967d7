"""The pipeline end to end on small generated data.

One full run (module fixture) is inspected by several tests: the submission,
the journal's events at every level, the validation score against an Otsu
baseline.  Other tests cover a failing preflight, a tiny budget, resume and
cancellation.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.model import metric
from nx47_pipeline.telemetry.journal import read_journal, verify_journal
from nx47_pipeline.run.orchestrator import run_pipeline
from waits import wait_until  # noqa: E402

STAGES_PER_VOLUME = ("features", "validate", "segment")


def small_config(data: Path, out: Path, **kw) -> RunConfig:
    base = dict(
        data_root=str(data),
        out_dir=str(out),
        max_train_volumes=0,
        max_val_volumes=2,
        budget_s=900.0,
        heartbeat_interval_s=0.2,
        stall_after_s=30.0,
        console=False,
        progress_interval_s=0.0,
        samples_per_class=3000,
        search_max_iter=40,
        fit_max_iter=120,
        l1_grid=(1e-4, 1e-2),
        l2_grid=(1e-3,),
        threshold_grid=(0.4, 0.6),
        use_unet=False,
        min_component_voxels=20,
    )
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline-data")
    generate_demo_dataset(root, n_train=6, n_test=2, shape=48, seed=5)
    return root


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline-run")
    stream = io.StringIO()

    def refuse(*args, **kwargs):
        raise AssertionError("the Betti-number approximation ran on a default path")

    # Every score the run computes (search ranking, post-processing choice,
    # validation) must be the exact TopoScore: the approximation's pieces
    # refuse to run for the whole of this run.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metric, "betti_min_matcher", refuse)
        mp.setattr(metric, "topo_feature_counts", refuse)
        result = run_pipeline(small_config(data_root, out), console_stream=stream)
    return result, out, read_journal(out / "journal.jsonl")


def test_every_score_of_the_run_is_the_exact_toposcore(full_run):
    result, out, _ = full_run
    stats = json.loads((out / "stats.json").read_text())
    per_volume = stats["validation"]["per_volume"]
    assert per_volume
    for vid, rec in per_volume.items():
        assert rec["topo_method"] == metric.TopoMethod.EXACT.value, vid
        on_disk = json.loads((out / "val" / f"{vid}.json").read_text())
        assert on_disk["topo_method"] == metric.TopoMethod.EXACT.value
        # the parts per dimension travel with the score
        assert len(on_disk["topo_matched"]) == 3 and len(on_disk["betti_gt"]) == 3
        assert all(m <= min(p, g) for m, p, g in
                   zip(on_disk["topo_matched"], on_disk["betti_pred"], on_disk["betti_gt"]))


def test_full_run_produces_a_valid_submission(full_run, data_root):
    result, out, _ = full_run
    assert result.status == "ok", result.stats
    assert result.exit_code == 0
    test_ids = sorted(p.stem for p in (data_root / "test_images").glob("*.tif"))
    with zipfile.ZipFile(out / "submission.zip") as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"{i}.tif" for i in test_ids)
        for vid in test_ids:
            mask = tifffile.imread(io.BytesIO(zf.read(f"{vid}.tif")))
            src = tifffile.imread(data_root / "test_images" / f"{vid}.tif")
            assert mask.shape == src.shape
            assert mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 1}
            assert mask.any(), "the model should find some surface"


def test_journal_verifies_and_holds_every_level(full_run):
    result, out, events = full_run
    ver = verify_journal(out / "journal.jsonl")
    assert ver.ok and not ver.torn_tail
    kinds = Counter(e.kind.value for e in events)
    for k in ("RUN_START", "CONFIG", "COVERAGE_AUDIT", "PREFLIGHT_OK", "BUDGET", "STEP",
              "PROGRESS_UPDATE", "HEARTBEAT", "METRIC", "PREVIEW", "ARRAY_TRACE",
              "GLOBAL_STATS", "EXEC_COMPLETE"):
        assert kinds[k] > 0, f"no {k} event"
    assert events[-1].kind.value == "EXEC_COMPLETE"
    assert events[-1].payload.status == "ok"
    assert events[-1].payload.journal_head  # chain head recorded at the end

    stages_begun = [e.stage for e in events if e.kind.value == "STEP" and e.payload.phase == "begin"]
    for name in ("discovery", "preflight", "features", "search", "fit_prox", "validate", "segment", "package"):
        assert name in stages_begun, name

    progress = [e for e in events if e.kind.value == "PROGRESS_UPDATE"]
    # per-iteration fit_prox progress
    fit_iters = [e.payload.substep_done for e in progress if e.stage == "fit_prox" and e.payload.substep == "iteration"]
    assert len(set(fit_iters)) >= 10
    assert fit_iters == sorted(fit_iters)
    # per-file progress in every per-volume stage
    for stage in STAGES_PER_VOLUME:
        files = {e.payload.file for e in progress if e.stage == stage and e.payload.file}
        assert len(files) >= 2, stage
    # global progress: in [0, 1], never backwards, ends at 1
    glob = [e.payload.global_ for e in progress]
    assert all(0.0 <= g <= 1.0 for g in glob)
    assert all(b >= a - 1e-12 for a, b in zip(glob, glob[1:]))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["global"] == pytest.approx(1.0)
    # objective reported as METRIC
    assert any(e.payload.name == "fit_prox_objective" for e in events if e.kind.value == "METRIC")


def test_heartbeats_arrive_during_long_steps(full_run):
    _, _, events = full_run
    beats = [e for e in events if e.kind.value == "HEARTBEAT"]
    assert {b.stage for b in beats} & {"features", "search", "fit_prox", "segment", "validate", "preflight"}
    assert all(b.payload.state in {"ACTIVE", "COMPUTING", "STALLED", "FINISHED", "FAILED", "CANCELLED"} for b in beats)


def test_model_beats_otsu_on_the_validation_score(full_run, data_root):
    from nx47_pipeline.model.metric import score_volume
    from nx47_pipeline.model.postprocess import otsu_baseline

    result, out, _ = full_run
    per_volume = result.stats["validation"]["per_volume"]
    assert per_volume, "validation volumes were scored"
    model_scores, otsu_scores = [], []
    for vid, s in per_volume.items():
        image = tifffile.imread(data_root / "train_images" / f"{vid}.tif")
        label = tifffile.imread(data_root / "train_labels" / f"{vid}.tif")
        otsu_scores.append(score_volume(otsu_baseline(image), label).score)
        model_scores.append(s["score"])
        # the stored score is the metric of the stored mask
        mask = tifffile.imread(out / "val" / f"{vid}.tif")
        assert score_volume(mask, label).score == pytest.approx(s["score"], abs=1e-9)
    assert np.mean(model_scores) > np.mean(otsu_scores) + 0.05, (model_scores, otsu_scores)


def test_coverage_audit_and_global_stats(full_run):
    result, out, events = full_run
    audit = [e for e in events if e.kind.value == "COVERAGE_AUDIT"][-1].payload
    assert audit.pair_count_discovered == 6
    assert audit.pair_count_selected_for_training == audit.n_train + audit.n_val == 6
    assert audit.coverage_pct_selected_vs_discovered == pytest.approx(100.0)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["test"] == 2
    assert set(stats["stage_seconds"]) >= {"features", "search", "fit_prox", "segment", "package"}
    assert stats["validation"]["mean_score"] is not None


def test_failing_preflight_stops_before_training(data_root, tmp_path):
    # every training label unusable -> the preflight cannot train and fails
    bad = tmp_path / "bad-data"
    import shutil

    shutil.copytree(data_root, bad)
    for p in (bad / "train_labels").glob("*.tif"):
        lab = tifffile.imread(p)
        tifffile.imwrite(p, np.full_like(lab, 2), compression="lzw")
    out = tmp_path / "out"
    result = run_pipeline(small_config(bad, out))
    assert result.status == "preflight_failed"
    assert result.exit_code == 3
    events = read_journal(out / "journal.jsonl")
    kinds = [e.kind.value for e in events]
    assert "PREFLIGHT_FAIL" in kinds and "PREFLIGHT_OK" not in kinds
    fail = next(e for e in events if e.kind.value == "PREFLIGHT_FAIL")
    assert fail.payload.reason
    # nothing expensive ran
    assert not (out / "features").exists() and not (out / "model").exists()
    skipped = {e.stage for e in events if e.kind.value == "STEP" and e.payload.status == "skipped"}
    assert {"features", "search", "fit_prox"} <= skipped


def test_tiny_budget_still_ends_with_a_complete_submission(data_root, tmp_path):
    out = tmp_path / "out"
    budget = 6.0
    t0 = time.monotonic()
    result = run_pipeline(small_config(data_root, out, budget_s=budget, safety_margin_frac=0.1))
    elapsed = time.monotonic() - t0
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert len(zf.namelist()) == 2
    events = read_journal(out / "journal.jsonl")
    assert any(e.kind.value == "BUDGET" for e in events)
    assert result.submission is not None
    # the run, preflight included, ended inside its budget (its own clock;
    # the wall clock adds only the interpreter's start-up)
    done = events[-1]
    assert done.kind.value == "EXEC_COMPLETE" and done.payload.status == "ok"
    assert done.payload.duration_s <= budget
    assert elapsed < budget + 5


def test_cancel_is_honoured_within_two_seconds(data_root, tmp_path):
    out = tmp_path / "out"
    token = CancelToken()
    holder = {}
    th = threading.Thread(target=lambda: holder.setdefault("r", run_pipeline(small_config(data_root, out), cancel=token)))
    th.start()
    journal = out / "journal.jsonl"
    wait_until(lambda: journal.exists() and '"stage":"features"' in journal.read_text(), 120,
               "the features stage in the journal")
    t_cancel = time.monotonic()
    token.cancel("test")
    th.join(30)
    assert not th.is_alive()
    assert time.monotonic() - t_cancel < 2.0 + 1.0  # join overhead
    result = holder["r"]
    assert result.status == "cancelled" and result.exit_code == 130
    events = read_journal(journal)
    cancelled = [e for e in events if e.kind.value == "CANCELLED"]
    assert cancelled and cancelled[0].t - [e for e in events if e.kind.value != "HEARTBEAT"][0].t >= 0
    assert verify_journal(journal).ok
    assert not list(out.rglob(".*tmp*")), "no temporary files left behind"
    assert not (out / "run.lock").exists()


def test_rerun_resumes_and_gives_identical_masks(full_run, data_root, tmp_path):
    import shutil

    _, out, events = full_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    # lose the later stages, as after a crash during segmentation
    shutil.rmtree(copy / "test")
    (copy / "submission.zip").unlink()
    result = run_pipeline(small_config(data_root, copy))
    assert result.status == "ok"
    for p in sorted((out / "test").glob("*.tif")):
        np.testing.assert_array_equal(tifffile.imread(p), tifffile.imread(copy / "test" / p.name))
    new_events = read_journal(copy / "journal.jsonl")
    assert len(new_events) > len(events)  # the chain continued
    assert verify_journal(copy / "journal.jsonl").ok
    assert json.loads((copy / "stats.json").read_text())["resumed"] is True


def test_prior_shift_maps_balanced_probabilities_to_the_data_prior():
    from nx47_pipeline.model.linear import prior_shift

    y = np.array([0, 1] * 50)
    # 20 % surface among labelled voxels: logit(0.2) - logit(0.5)
    assert prior_shift(np.array([800, 200]), y) == pytest.approx(np.log(0.25))
    assert prior_shift(np.array([500, 500]), y) == pytest.approx(0.0)
    assert prior_shift(np.array([0, 0]), y) == 0.0


def test_search_metrics_come_from_the_search_stage_only(full_run):
    _, _, events = full_run
    grid = [e for e in events if e.kind.value == "METRIC" and e.payload.name.startswith("search_")]
    assert grid and {e.stage for e in grid} == {"search"}


def test_the_search_chooses_dust_and_plug_sizes_on_validation_and_the_run_uses_them(full_run, data_root):
    from nx47_pipeline.data.discovery import discover
    from nx47_pipeline.model.bundle import load_bundle
    from nx47_pipeline.model.predict import segment_volume

    _, out, events = full_run
    cfg = small_config(data_root, out)
    saved = json.loads((out / "search" / "results.json").read_text())
    best = saved["best"]
    assert best["min_size"] in cfg.dust_sizes() and best["plug_size"] in cfg.plug_sizes()
    # the greedy pass: every dust size at the first plug size, then the other plug sizes at the chosen dust
    tried = [(r["min_size"], r["plug_size"]) for r in saved["postprocess"]["scores"]]
    assert tried == [(d, 0) for d in cfg.dust_sizes()] + [(best["min_size"], q) for q in cfg.plug_sizes()[1:]]
    means = dict(zip(tried, (r["score"] for r in saved["postprocess"]["scores"])))
    assert best["score"] == pytest.approx(max(means.values()))
    post = [e for e in events if e.kind.value == "METRIC" and e.payload.name == "postprocess_score"]
    assert len([e for e in post if e.stage == "search"]) == len(tried)
    # the auto-context rounds' own sweep (validate) says so
    assert all(e.stage == "validate" and e.payload.extra["model"] == "context" for e in post if e.stage != "search")
    # the search's amount of work counted the candidates: its progress reached the total it announced
    search = [e for e in events if e.kind.value == "PROGRESS_UPDATE" and e.stage == "search"]
    assert search and search[-1].payload.step_done == pytest.approx(search[-1].payload.step_total)
    assert any("dust / plug" in (e.payload.substep or "") for e in search)
    # the bundle and the test masks follow the choice: the search's, or the auto-context sweep's after it
    manifest = json.loads((out / "model" / "model.json").read_text())
    sweep = json.loads((out / "val" / "context_thresholds.json").read_text())
    assert (sweep["search_min_size"], sweep["search_plug_size"]) == (best["min_size"], best["plug_size"])
    best = {**best, "low": sweep["chosen"][0], "high": sweep["chosen"][1], "min_size": sweep["chosen_min_size"],
            "plug_size": sweep["chosen_plug_size"]}
    assert (manifest["postprocess"]["min_size"], manifest["postprocess"]["plug_size"]) == (best["min_size"],
                                                                                            best["plug_size"])
    model = load_bundle(out / "model").model
    assert len(model.rounds) == cfg.context_rounds
    for rec in discover(data_root).test:
        mask = segment_volume(tifffile.imread(rec.image_path), model, low=best["low"], high=best["high"],
                              closing_radius=tuple(best["closing_radius"]), thin=best["thin"],
                              min_size=best["min_size"], plug_size=best["plug_size"])
        np.testing.assert_array_equal(tifffile.imread(out / "test" / f"{rec.id}.tif"), mask)


def test_auto_coverage_applies_the_largest_coverage_that_fits(data_root, tmp_path):
    out = tmp_path / "out"
    # a budget that leaves time for the preflight but not for all 6 pairs
    result = run_pipeline(small_config(data_root, out, budget_s=30.0, auto_coverage=True,
                                       max_train_volumes=0, max_val_volumes=0))
    events = read_journal(out / "journal.jsonl")
    proj = [e for e in events if e.kind.value == "BUDGET" and e.payload.decision == "projection"]
    auto = [e for e in events if e.kind.value == "BUDGET" and e.payload.decision == "auto_coverage"]
    assert proj and auto, [e.payload.decision for e in events if e.kind.value == "BUDGET"]
    audits = [e.payload for e in events if e.kind.value == "COVERAGE_AUDIT"]
    assert len(audits) == 2  # before and after the decision
    fit = proj[-1].payload
    assert fit.max_train_fit >= 1 and fit.max_val_fit >= 1
    # the run now uses the largest coverage the projection found to fit
    from nx47_pipeline.data.coverage import select_coverage
    from nx47_pipeline.data.discovery import discover

    expected = select_coverage(discover(data_root).pairs, max_train_volumes=fit.max_train_fit,
                               max_val_volumes=fit.max_val_fit, seed=47)
    assert audits[-1].train_ids == [r.id for r in expected.train]
    assert audits[-1].val_ids == [r.id for r in expected.val]
    assert auto[-1].payload.fits is True
    assert result.submission is not None
    # a rerun in the folder resumes with the recorded decision (nothing moved aside)
    again = run_pipeline(small_config(data_root, out, budget_s=30.0, auto_coverage=True,
                                      max_train_volumes=0, max_val_volumes=0))
    assert again.status == "ok"
    assert not list(out.glob("stale-*"))
    later = read_journal(out / "journal.jsonl")[len(events):]
    assert not [e for e in later if e.kind.value == "WARNING" and e.payload.code == "resume_key_changed"]
    assert [e.payload.train_ids for e in later if e.kind.value == "COVERAGE_AUDIT"][-1] == audits[-1].train_ids


def test_a_bad_first_training_pair_does_not_fail_the_preflight(data_root, tmp_path):
    import shutil

    from nx47_pipeline.data.coverage import select_coverage
    from nx47_pipeline.data.discovery import discover

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    first = select_coverage(discover(data).pairs, max_train_volumes=0, max_val_volumes=2, seed=47).train[0]
    lab = tifffile.imread(first.label_path)
    lab[lab == 1] = 3  # label values outside {0, 1, 2}
    tifffile.imwrite(first.label_path, lab, compression="lzw")
    out = tmp_path / "out"
    result = run_pipeline(small_config(data, out))
    assert result.status == "ok", result.error
    events = read_journal(out / "journal.jsonl")
    assert any(e.kind.value == "PREFLIGHT_OK" for e in events)
    named = [e for e in events if e.kind.value in ("WARNING", "ERROR")
             and (first.id in e.payload.subject or first.id in e.payload.message)]
    assert named and any("label" in e.payload.message for e in named)
    assert (out / "submission.zip").is_file()


def test_a_threaded_run_leaves_the_kernel_environment_unchanged(data_root, tmp_path):
    """A dashboard run is a thread in the user's kernel: it must leave
    ``os.environ`` as it found it, U-Net on so torch is imported.  (Importing
    torch._dynamo writes TORCHINDUCTOR_CACHE_DIR for the length of the
    import, which the U-Net backend puts back; the probe checks every event
    the run's own thread publishes, i.e. between any two of its steps.)"""
    import os

    pytest.importorskip("torch")
    before = dict(os.environ)
    seen: list[dict] = []
    token = CancelToken()

    class EnvProbe:  # a sink: checks the environment at every event of the run's thread
        def handle(self, event):
            if threading.current_thread() is th and dict(os.environ) != before:
                seen.append(dict(os.environ))

        def close(self):
            pass

    config = small_config(data_root, tmp_path / "out", use_unet=True, unet_epochs=1, unet_patch=16,
                          unet_width=4, unet_depth=1, unet_batch=1, max_train_volumes=2, max_val_volumes=1)
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(
        r=run_pipeline(config, cancel=token, extra_sinks=[EnvProbe()])), daemon=True)
    th.start()
    th.join(300)
    assert not th.is_alive()
    assert result["r"].status == "ok", result["r"].error
    assert result["r"].stats["stage_status"]["unet"] == "ok"
    assert dict(os.environ) == before
    assert not seen, {k for k in seen[0] if seen[0].get(k) != before.get(k)}


def test_each_stage_after_the_projection_is_reprojected(full_run):
    """BUDGET ``reprojection`` after every stage that ran after the plan, with
    the error so far, so the remaining time follows reality."""
    result, _, events = full_run
    budget = [e for e in events if e.kind.value == "BUDGET"]
    decisions = [e.payload.decision for e in budget]
    assert "projection" in decisions
    first = decisions.index("projection")
    re = [e for e in budget[first:] if e.payload.decision == "reprojection"]
    ran = [s for s in ("features", "search", "fit_prox", "validate", "segment", "package")
           if result.stats["stage_status"].get(s) == "ok"]
    assert [e.payload.extra["stage"] for e in re] == ran
    for e in re:
        x = e.payload.extra
        assert x["actual_over_projected"] > 0 and e.payload.projected_s >= 0
        assert x["stage_actual_s"] == pytest.approx(result.stats["stage_seconds"][x["stage"]], abs=0.05)
    assert re[-1].payload.projected_s == 0 and re[-1].payload.extra["remaining_stages"] == []


def test_a_u_net_that_validates_below_fit_prox_alone_is_dropped(data_root, tmp_path, monkeypatch):
    """One epoch of a 4-channel U-Net without the prior channel (so from
    nothing, not from fit_prox's map) replacing fit_prox's probabilities
    validates far below fit_prox alone: the run says so, segments the test
    volumes with fit_prox alone and exports no U-Net."""
    import dataclasses

    from nx47_pipeline.run import stages

    plain = stages.unet_params
    monkeypatch.setattr(stages, "unet_params", lambda ctx: dataclasses.replace(plain(ctx), prior=False))
    out = tmp_path / "out"
    config = small_config(data_root, out, use_unet=True, unet_epochs=1, unet_patch=16, unet_width=4,
                          unet_depth=1, unet_batch=1, unet_fuse="replace", max_train_volumes=2,
                          max_val_volumes=2)
    result = run_pipeline(config)
    assert result.status == "ok", result.error
    assert result.stats["stage_status"]["unet"] == "ok"
    events = read_journal(out / "journal.jsonl")
    drop = [e for e in events if e.kind.value == "WARNING" and e.payload.code == "unet_not_better"]
    assert len(drop) == 1 and "below fit_prox alone" in drop[0].payload.message
    linear = {p.stem: json.loads(p.read_text())["score"] for p in (out / "val" / "linear").glob("*.json")}
    assert len(linear) == 2
    # the run's validation result is fit_prox alone's, and so are the test masks
    assert result.stats["validation"]["mean_score"] == pytest.approx(float(np.mean(list(linear.values()))))
    from nx47_pipeline.data.discovery import discover
    from nx47_pipeline.model.bundle import load_bundle
    from nx47_pipeline.model.predict import segment_volume

    model = load_bundle(out / "model").model  # fit_prox with its auto-context rounds
    best = json.loads((out / "search" / "results.json").read_text())["best"]
    rec = discover(data_root).test[0]
    alone = segment_volume(tifffile.imread(rec.image_path), model, low=best["low"], high=best["high"],
                           closing_radius=tuple(best["closing_radius"]), min_size=best["min_size"],
                           thin=best["thin"], plug_size=best["plug_size"])
    np.testing.assert_array_equal(tifffile.imread(out / "test" / f"{rec.id}.tif"), alone)
    manifest = json.loads((out / "model" / "model.json").read_text())
    assert not manifest.get("unet")
