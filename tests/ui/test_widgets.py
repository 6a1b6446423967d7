"""In-process dashboard tests: state reducers and widgets, driven by events.

No kernel and no browser: widgets are real ipywidgets objects whose values
are read back; controls are moved by setting ``.value`` and clicked with
``.click()``.
"""

from __future__ import annotations

import io
import os
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nx47_pipeline.run.budget import PreflightTimings
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.telemetry.events import (
    Event,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    HeartbeatPayload,
    MessagePayload,
    MetricPayload,
    PreviewPayload,
    ProgressPayload,
    RunStartPayload,
    StepPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_pipeline.io.volumes import write_volume
from nx47_widgets.app import Dashboard
from nx47_widgets.render import SliceRequest, render_slice

from nx47_widgets.state import DashboardState, HeartbeatState, ProgressState
from waits import wait_until  # noqa: E402

_seq = itertools.count()


def ev(kind: EventKind, payload, *, stage: str = "features", ts: float | None = None) -> Event:
    ts = time.time() if ts is None else ts
    return Event(seq=next(_seq), ts=ts, t=0.0, kind=kind, stage=stage, payload=payload)


def progress(done, total, *, glob=0.0, step="features", file="", file_done=0, file_total=0):
    return ProgressPayload(step=step, step_index=2, step_count=9, step_done=done,
                           step_total=total, file=file, file_done=file_done,
                           file_total=file_total, global_=glob, eta_s=120.0)


def beat(state="ACTIVE", interval=1.0, since_progress=0.0):
    return HeartbeatPayload(state=state, since_progress_s=since_progress, cpu_pct=97.0,
                            worker_cpu_s=1.0, rss_mb=321.0, elapsed_s=5.0,
                            budget_left_s=100.0, interval_s=interval)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_demo_dataset(root, n_train=6, n_test=1, shape=32, seed=1)
    return root


def make_dash(tmp_path, data_root, **kw) -> Dashboard:
    cfg = RunConfig(data_root=str(data_root), out_dir=str(tmp_path / "out"),
                    max_train_volumes=4, max_val_volumes=2)
    kw.setdefault("start_pump", False)
    return Dashboard(cfg, **kw)


# ---------------------------------------------------------------------------
# Coverage panel
# ---------------------------------------------------------------------------
def test_sliders_update_coverage_panel_at_once(tmp_path, data_root):
    d = make_dash(tmp_path, data_root)
    try:
        # bounded by discovery: each slider by what the other leaves of the 6 pairs
        assert d.settings.max_train.max == 4 and d.settings.max_val.max == 2
        assert d.panels.coverage.last["discovered"] == 6
        d.settings.max_train.value, d.settings.max_val.value = 2, 1
        assert d.settings.max_train.max == 5 and d.settings.max_val.max == 4
        s = d.panels.coverage.last
        assert (s["selected"], s["n_train"], s["n_val"]) == (3, 2, 1)
        assert s["coverage_pct"] == pytest.approx(50.0)
        assert "50.0%" in d.panels.coverage.html.value
        d.settings.max_train.value = 0  # 0 = all: the rest of the pairs
        s = d.panels.coverage.last
        assert s["selected"] == 6 and s["coverage_pct"] == pytest.approx(100.0)
        assert "fits" not in s  # no preflight yet: no verdict
    finally:
        d.close()


def test_coverage_panel_projects_against_budget_after_preflight(tmp_path, data_root):
    timings = PreflightTimings(
        features_s_per_mvox=10.0, search_s_per_mvox=10.0, fit_s_per_iter_row=1e-6,
        validate_s_per_mvox=10.0, segment_s_per_mvox=10.0, fallback_s_per_mvox=1.0,
        package_s_per_volume=0.1, mvox_train=1.0, mvox_test=1.0, rows_per_volume=1000.0,
        grid_fits=4, data_root=str(Path(data_root).resolve()))
    timings.save(tmp_path / "out" / "preflight" / "timings.json")
    d = make_dash(tmp_path, data_root)
    try:
        d.settings.max_train.value, d.settings.max_val.value = 4, 2
        d.settings.budget_min.value = 600.0  # 10 h: everything fits
        s = d.panels.coverage.last
        assert s["fits"] is True and "fits" in d.panels.coverage.html.value
        assert (s["max_train_fit"], s["max_val_fit"]) != (0, 0)
        d.settings.budget_min.value = 1.0  # one minute: 6 volumes at ~13 s each do not fit
        s = d.panels.coverage.last
        assert s["fits"] is False
        assert "does not fit" in d.panels.coverage.html.value
        assert s["projected_s"] > 60.0
        assert s["max_train_fit"] + s["max_val_fit"] < 6
    finally:
        d.close()


def test_bad_data_root_is_reported_not_raised(tmp_path):
    cfg = RunConfig(data_root=str(tmp_path / "missing"), out_dir=str(tmp_path / "out"))
    d = Dashboard(cfg, start_pump=False)
    try:
        assert d.coverage is None
        assert "missing" in d.panels.coverage.html.value
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Progress bars
# ---------------------------------------------------------------------------
def test_progress_events_drive_bars_and_styles():
    st = ProgressState()
    st.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1)))
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin", index=2, count=9)))
    st.apply(ev(EventKind.PROGRESS_UPDATE, progress(3, 12, glob=0.25, file="1407735",
                                                    file_done=5, file_total=10)))
    g, s, f = st.bars["global"], st.bars["stage"], st.bars["file"]
    assert g.value == pytest.approx(0.25) and s.value == pytest.approx(0.25)
    assert f.value == pytest.approx(0.5)
    # the pipeline's rate-based ETA (2 min here) is not shown: before the
    # projection there is none
    assert "3 of 12" in s.text and "1407735" in f.text
    assert "ETA after the preflight" in g.text and "2m00s" not in g.text
    st.apply(ev(EventKind.STEP, StepPayload(phase="end", status="ok", duration_s=3.0)))
    assert s.style == "success" and s.value == 1.0
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin"), stage="search"))
    st.apply(ev(EventKind.STEP, StepPayload(phase="end", status="skipped"), stage="search"))
    assert s.style == "warning"
    # a failed stage bar stays failed whatever progress arrives afterwards
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin"), stage="fit_prox"))
    st.apply(ev(EventKind.STEP, StepPayload(phase="end", status="failed", message="nan"),
                stage="fit_prox"))
    st.apply(ev(EventKind.PROGRESS_UPDATE, progress(5, 10, glob=0.6), stage="fit_prox"))
    assert s.style == "danger" and s.value == pytest.approx(0.5)
    st.apply(ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="failed", duration_s=9)))
    assert g.style == "danger"
    st.apply(ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=9)))
    assert g.style == "danger"  # failed stays failed


def test_progress_widgets_follow_state(tmp_path, data_root):
    d = make_dash(tmp_path, data_root)
    try:
        d.flush([ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir=str(tmp_path), pid=1)),
                 ev(EventKind.PROGRESS_UPDATE, progress(1, 4, glob=0.1)),
                 ev(EventKind.PROGRESS_UPDATE, progress(2, 4, glob=0.3))], False)
        assert d.panels.progress.bars["global"].value == pytest.approx(0.3)
        assert d.panels.progress.bars["stage"].value == pytest.approx(0.5)
        d.flush([ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=5))],
                False)
        assert d.panels.progress.bars["global"].bar_style == "success"
        assert d.panels.progress.bars["global"].value == 1.0
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Heartbeat
# ---------------------------------------------------------------------------
def test_heartbeat_states_and_local_stall_detection():
    now = [1000.0]
    hb = HeartbeatState(clock=lambda: now[0])
    assert hb.view().state == "WAITING"
    hb.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1), ts=1000.0))
    hb.apply(ev(EventKind.HEARTBEAT, beat("ACTIVE", interval=2.0), ts=1000.5))
    now[0] = 1001.0
    v = hb.view()
    assert v.state == "ACTIVE" and v.since_beat_s == pytest.approx(0.5)
    assert v.cpu_pct == 97.0 and v.rss_mb == 321.0
    hb.apply(ev(EventKind.HEARTBEAT, beat("COMPUTING", interval=2.0, since_progress=30.0),
                ts=1002.0))
    now[0] = 1003.0
    v = hb.view()
    assert v.state == "COMPUTING" and v.since_progress_s == pytest.approx(31.0)
    # beats stop arriving: after 3 intervals (6 s) the light turns STALLED by itself
    now[0] = 1007.9
    assert hb.view().state == "COMPUTING"
    now[0] = 1008.5
    assert hb.view().state == "STALLED"
    # a beat brings it back; the end of the run is final
    hb.apply(ev(EventKind.HEARTBEAT, beat("ACTIVE", interval=2.0), ts=1008.6))
    assert hb.view().state == "ACTIVE"
    hb.apply(ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok"), ts=1009.0))
    now[0] = 2000.0
    assert hb.view().state == "FINISHED"


def test_heartbeat_light_turns_stalled_in_the_widget_without_events(tmp_path, data_root):
    now = [5000.0]
    d = make_dash(tmp_path, data_root, clock=lambda: now[0])
    try:
        d.flush([ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir=str(tmp_path), pid=1),
                    ts=5000.0),
                 ev(EventKind.HEARTBEAT, beat("ACTIVE", interval=1.0), ts=5000.0)], False)
        assert "data-state='ACTIVE'" in d.panels.heartbeat.html.value
        now[0] = 5010.0
        d.flush([], True)  # the pump's time tick, no event
        assert "data-state='STALLED'" in d.panels.heartbeat.html.value
        assert "10s ago" in d.panels.heartbeat.html.value
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Pump coalescing and Stop
# ---------------------------------------------------------------------------
def test_pump_bounds_widget_syncs_under_an_event_flood(tmp_path, data_root):
    n = 20000
    d = make_dash(tmp_path, data_root, pump_interval=0.1)

    def job(config, cancel, sink):
        bus = EventBus()
        bus.attach(sink)
        bus.publish(EventKind.RUN_START, RunStartPayload(run_id="f", out_dir=config.out_dir, pid=1))
        t_end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < t_end:  # as fast as possible for 1.5 s
            bus.publish(EventKind.PROGRESS_UPDATE, progress(i % n, n, glob=(i % n) / n))
            i += 1
        bus.publish(EventKind.PROGRESS_UPDATE, progress(n - 1, n, glob=0.75))
        bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=1.5))
        return i

    try:
        d.job = job
        syncs0, t0 = d.syncer.messages, time.monotonic()
        d.pump.start()
        d.controls.run_button.click()
        assert d.wait(30)
        elapsed = time.monotonic() - t0
        published = d.runner.result
        assert published > 1000  # a real flood
        # at most one flush per 0.1 s (+1 for the first)
        assert d.pump.flushes <= elapsed / 0.1 + 2
        # and each flush syncs a bounded number of widgets: the four bars and
        # their texts, the heartbeat, the log, the results, the buttons
        assert d.syncer.messages - syncs0 <= 14 * d.pump.flushes
        assert d.syncer.messages - syncs0 < published / 20
        assert d.state.progress.bars["global"].value == 1.0  # finished
        assert d.panels.progress.bars["global"].bar_style == "success"
    finally:
        d.close()


def test_stop_button_cancels_within_two_seconds(tmp_path, data_root):
    started = threading.Event()

    def job(config, cancel, sink):
        bus = EventBus()
        bus.attach(sink)
        bus.publish(EventKind.RUN_START, RunStartPayload(run_id="s", out_dir=config.out_dir, pid=1))
        i = 0
        while not cancel.cancelled:
            bus.publish(EventKind.PROGRESS_UPDATE, progress(i, 10**6, glob=i / 10**6))
            started.set()
            cancel.wait(0.05)  # a step of work, cut short by Stop
            i += 1
        bus.publish(EventKind.CANCELLED, MessagePayload(message=cancel.reason))
        bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="cancelled"))

    d = make_dash(tmp_path, data_root, job=job, start_pump=True)
    try:
        d.controls.run_button.click()
        assert started.wait(10)
        assert d.controls.stop_button.disabled is False and d.controls.run_button.disabled is True
        d.controls.stop_button.click()
        assert d.runner.join(2.0), "the run did not stop within 2 s of Stop"
        assert d.runner.stop_latency_s < 2.0
        assert d.wait(5)
        assert d.state.results.status == "cancelled"
        assert d.panels.progress.bars["global"].bar_style == "warning"
        assert d.controls.run_button.disabled is False and d.controls.stop_button.disabled is True
        assert "user pressed Stop" in d.panels.log.text.value
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Attaching to a finished run
# ---------------------------------------------------------------------------
def test_attach_to_a_finished_run_shows_results_and_verifies_journal(tmp_path, data_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.zip").write_bytes(b"")
    bus = EventBus()
    sink = JournalSink(out / "journal.jsonl")
    bus.attach(sink)
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="done", out_dir=str(out), pid=1))
    bus.publish(EventKind.PROGRESS_UPDATE, progress(4, 4, glob=1.0))
    bus.publish(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats={"val_score_mean": 0.61}))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(
        status="ok", submission=str(out / "submission.zip"), duration_s=42.0))
    bus.close()

    d = make_dash(tmp_path, data_root)  # finds the finished run and opens it
    try:
        assert "attached to" in d.controls.status.value and "not running" in d.controls.status.value
        assert d.runner is not None
        d.pump.pump_once()
        assert d.state.results.status == "ok"
        html = d.panels.results.html.value
        assert "submission.zip" in html and "val_score_mean" in html
        assert "journal verified: 4 lines" in html
        assert "data-state='FINISHED'" in d.panels.heartbeat.html.value
        assert d.controls.run_button.disabled is False
    finally:
        d.close()


def test_attach_reports_tampered_journal(tmp_path, data_root):
    out = tmp_path / "out"
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="t", out_dir=str(out), pid=1))
    bus.publish(EventKind.WARNING, MessagePayload(message="original"))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok"))
    bus.close()
    path = out / "journal.jsonl"
    path.write_text(path.read_text().replace("original", "modified"))
    d = make_dash(tmp_path, data_root)
    try:
        d.attach()
        d.pump.pump_once()
        assert "journal verification FAILED at line 2" in d.panels.results.html.value
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Slice previewer
# ---------------------------------------------------------------------------
def _preview_files(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 16, 16), dtype=np.uint8)
    label = np.zeros_like(img)
    label[:, 4:8, :] = 1
    label[:, :, :2] = 2
    pred = np.zeros_like(img)
    pred[:, 6:10, :] = 1
    out = tmp_path / "out"
    write_volume(tmp_path / "img.tif", img)
    write_volume(tmp_path / "lab.tif", label)
    write_volume(out / "val" / "v1.tif", pred)
    write_volume(out / "val" / "v1_prob.tif", (pred * 200).astype(np.uint8))
    return PreviewPayload(volume_id="v1", split="val", shape=[8, 16, 16],
                          image_path=str(tmp_path / "img.tif"),
                          label_path=str(tmp_path / "lab.tif"), pred_path="val/v1.tif",
                          prob_path="val/v1_prob.tif", slices={"z": [2, 5, 6]}, score=0.5)


def test_render_slice_error_map_colours(tmp_path):
    p = _preview_files(tmp_path)
    req = SliceRequest(image=p.image_path, axis="z", index=3, label=p.label_path,
                       pred=str(tmp_path / "out" / p.pred_path), overlays=("error",),
                       opacity=1.0, min_size=16)
    rgb = np.asarray(Image.open(io.BytesIO(render_slice(req))).convert("RGB"))
    assert rgb.shape == (16, 16, 3)
    assert tuple(rgb[8, 8]) == (255, 23, 68)  # predicted, label 0: false positive (red)
    assert tuple(rgb[5, 8]) == (255, 214, 0)  # label 1, not predicted: false negative
    assert tuple(rgb[5, 0]) != (255, 214, 0)  # ignore region (label 2): no error drawn
    assert tuple(rgb[7, 8]) != (255, 23, 68)  # true positive: no error colour
    with pytest.raises(IndexError, match="slice index 8"):
        render_slice(SliceRequest(image=p.image_path, axis="z", index=8))
    with pytest.raises(ValueError, match="axis"):
        render_slice(SliceRequest(image=p.image_path, axis="q", index=0))


def test_previewer_follows_live_until_user_takes_control(tmp_path, data_root):
    p = _preview_files(tmp_path)
    d = make_dash(tmp_path, data_root)
    try:
        d.flush([ev(EventKind.RUN_START, RunStartPayload(run_id="p", out_dir=str(tmp_path / "out"),
                                                         pid=1)),
                 ev(EventKind.PREVIEW, p, stage="validate")], False)
        pv = d.panels.preview
        assert pv.volume.value == "val/v1" and pv.index.value == 5  # middle suggestion
        png = wait_until(lambda: pv.image.value, 10, "the slice's PNG", interval_s=0.02)
        # the whole 16 x 16 slice, one pixel per voxel: the canvas scales it in the browser
        assert Image.open(io.BytesIO(png)).size == (16, 16)
        assert pv.canvas.n_shown == 1 and pv.canvas.widget.layout.display == ""
        p2 = PreviewPayload(**{**p.to_dict(), "volume_id": "v2"})
        d.flush([ev(EventKind.PREVIEW, p2, stage="validate")], False)
        assert pv.volume.value == "val/v2"  # follows the new volume
        pv.index.value = 1  # the user takes control
        assert pv.follow.value is False
        p3 = PreviewPayload(**{**p.to_dict(), "volume_id": "v3", "split": "test"})
        d.flush([ev(EventKind.PREVIEW, p3, stage="segment")], False)
        assert pv.volume.value == "val/v2" and pv.index.value == 1
        assert [k for _, k in pv.volume.options] == ["val/v1", "val/v2", "test/v3"]
        pv.follow.value = True
        assert pv.volume.value == "test/v3"
        # the same request twice is served from the PNG cache
        renders = pv.renderer.renders
        req = pv.make_request()
        wait_until(lambda: pv.renderer.cached(req) is not None, 10, "the PNG in the cache", interval_s=0.02)
        pv.request()
        assert pv.renderer.renders == renders or pv.renderer.cached(req) is not None
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Log and charts
# ---------------------------------------------------------------------------
def test_log_level_and_kind_filters(tmp_path, data_root):
    d = make_dash(tmp_path, data_root)
    try:
        d.flush([ev(EventKind.WARNING, MessagePayload(message="slow disk", subject="1407735")),
                 ev(EventKind.ERROR, MessagePayload(message="bad tiff", subject="99")),
                 ev(EventKind.STEP, StepPayload(phase="begin")),
                 ev(EventKind.PROGRESS_UPDATE, progress(1, 2))], False)
        text = d.panels.log.text.value
        assert "slow disk" in text and "bad tiff" in text and "begin" in text
        # the kind column shows the console's label (PROGRESS for PROGRESS_UPDATE)
        assert " PROGRESS " not in text  # debug level hidden by default
        d.panels.log.level.value = "error"
        assert "bad tiff" in d.panels.log.text.value
        assert "slow disk" not in d.panels.log.text.value
        d.panels.log.level.value = "debug"
        d.panels.log.kind.value = "PROGRESS_UPDATE"
        lines = d.panels.log.text.value.splitlines()
        assert len(lines) == 1 and " PROGRESS " in lines[0]
    finally:
        d.close()


def test_charts_collect_metrics():
    st = DashboardState()
    for i, v in enumerate([5.0, 3.0, 2.0]):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="fit_prox_objective", value=v, step=i),
                    stage="fit_prox"))
    grid = {"l1": 1e-4, "l2": 1e-3, "low": 0.3, "high": 0.5}
    for vid, v in (("1", 0.2), ("2", 0.4)):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="search_score", value=v,
                                                    extra={**grid, "volume_id": vid}),
                    stage="search"))
    assert len(st.charts.grid) == 1 and st.charts.grid[0]["value"] == pytest.approx(0.3)
    st.apply(ev(EventKind.METRIC, MetricPayload(name="search_mean_score", value=0.35,
                                                extra={**grid, "n_volumes": 2}), stage="search"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="search_score", value=0.9,
                                                extra={**grid, "volume_id": "3"}), stage="search"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="unet_batch_loss", value=0.7, step=1),
                stage="unet"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="val_score", value=0.6, step=0,
                                                extra={"volume_id": "8"}), stage="validate"))
    st.apply(ev(EventKind.PREVIEW, PreviewPayload(volume_id="7", split="val", shape=[4, 4, 4],
                                                  image_path="/x", score=0.55), stage="validate"))
    assert st.charts.objective == [(0.0, 5.0), (1.0, 3.0), (2.0, 2.0)]
    assert len(st.charts.grid) == 1
    assert st.charts.grid[0]["l1"] == 1e-4 and st.charts.grid[0]["value"] == 0.35
    assert st.charts.loss == [(1.0, 0.7)]
    assert st.charts.val_scores == {"8": 0.6, "7": 0.55}


def test_the_loss_chart_follows_nnunet_in_a_run_that_trains_it():
    """A run with --model-kind nnunet: its per-iteration loss and per-epoch train loss fill the loss chart,
    titled nnU-Net, with the epoch's pseudo-Dice in the caption; before any point, the chart says the
    nnunet stage is running (not that the U-Net stage was skipped)."""
    from nx47_widgets.views import ChartsPanel, Syncer

    st = DashboardState()
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin", index=3, count=6), stage="nnunet"))
    assert st.charts.loss_title == "nnU-Net" and "nnunet is running" in st.charts.empty_text(st.charts.loss_stage)
    for i, v in enumerate([0.6, 0.5, 0.4, 0.3], 1):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="nnunet_batch_loss", value=v, step=i), stage="nnunet"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="nnunet_train_loss", value=0.45, step=1,
                                                extra={"val_loss": 0.4, "pseudo_dice": 0.2, "lr": 0.01}),
                stage="nnunet"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="nnunet_pseudo_dice", value=0.2, step=1), stage="nnunet"))
    assert st.charts.loss == [(1.0, 0.6), (2.0, 0.5), (3.0, 0.4), (4.0, 0.3)]
    assert st.charts.epoch_loss == [(1.0, 0.45)] and st.charts.pseudo_dice == [(1.0, 0.2)]
    panel = ChartsPanel(Syncer())
    try:
        panel.render(st.charts)
        assert "nnU-Net batch loss" in panel.loss.value and "pseudo-Dice 0.200 (epoch 1)" in panel.loss.value
    finally:
        panel.close()
    # a linear run keeps the U-Net's title
    assert DashboardState().charts.loss_title == "U-Net"


def test_charts_keep_unknown_metric_names_apart():
    st = DashboardState()
    payload = MetricPayload(name="val_score", value=0.5, step=3)
    object.__setattr__(payload, "name", "a_newer_metric")  # a name this dashboard lacks
    assert "charts" not in st.apply(ev(EventKind.METRIC, payload, stage="unet"))
    assert st.charts.other == {"a_newer_metric": [(3.0, 0.5)]}
    assert st.charts.version == 0
    assert "charts" not in st.apply(ev(EventKind.METRIC, MetricPayload(
        name="val_score", value=0.4), stage="validate"))  # no volume_id: no bar to draw
    assert st.charts.val_scores == {}


def test_reload_reattaches_to_a_live_resumed_run(tmp_path, data_root):
    """A new dashboard (page reload) finds run.lock with a live pid and follows the
    journal; an earlier finished run in the same journal does not end the view."""
    out = tmp_path / "out"
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="first", out_dir=str(out), pid=1))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="failed", duration_s=3))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="second", out_dir=str(out), pid=2,
                                                     resumed=True))
    bus.publish(EventKind.HEARTBEAT, beat("COMPUTING", interval=60.0))
    bus.publish(EventKind.PROGRESS_UPDATE, progress(1, 4, glob=0.4))
    (out / "run.lock").write_text(f"{os.getpid()}\n")  # a live process owns the run
    d = make_dash(tmp_path, data_root)
    try:
        assert d.runner is not None and d.controls.detached.value is True
        assert "attached to" in d.controls.status.value and "running" in d.controls.status.value
        d.pump.pump_once()
        assert d.state.run_id == "second"
        assert d.panels.progress.bars["global"].value == pytest.approx(0.4)
        assert d.panels.progress.bars["global"].bar_style == "info"  # not the old failure
        # the second run's light, not the first's failure: ACTIVE while its progress is
        # younger than progress_max_gap_s, COMPUTING after (the page may take that long to open)
        light = d.panels.heartbeat.html.value
        assert "data-state='ACTIVE'" in light or "data-state='COMPUTING'" in light
        assert d.controls.stop_button.disabled is False and d.controls.run_button.disabled is True
        bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=9))
        d.pump.pump_once()
        assert d.state.results.status == "ok" and d.controls.run_button.disabled is False
    finally:
        d.close()


def test_auto_coverage_toggle_is_explained_in_the_panel(tmp_path, data_root):
    d = make_dash(tmp_path, data_root)
    try:
        assert "auto coverage is on" not in d.panels.coverage.html.value
        d.settings.auto_coverage.value = True
        assert "auto coverage is on" in d.panels.coverage.html.value
        assert d.current_config().auto_coverage is True
    finally:
        d.close()


def test_charts_are_matplotlib_pngs_rendered_off_thread_at_most_once_per_interval():
    """Many updates in a burst give one render per interval (newest wins),
    on the renderer's thread, as PNG."""
    import threading as _th

    from nx47_widgets.views.mpl import ChartRenderer, snapshot

    t = [0.0]
    got = []
    done = _th.Event()

    def on_png(png, version):
        got.append((png[:8], version, _th.current_thread().name))
        done.set()

    r = ChartRenderer(on_png, min_interval_s=1.0, clock=lambda: t[0])
    st = DashboardState()
    try:
        for i in range(50):  # a burst: one render for the first, then the newest waits
            st.apply(ev(EventKind.METRIC, MetricPayload(name="fit_prox_objective", value=1.0 / (i + 1), step=i),
                        stage="fit_prox"))
            r.submit(snapshot(st.charts))
        assert done.wait(30)
        done.clear()
        assert len(got) == 1 and got[0][0] == b"\x89PNG\r\n\x1a\n" and got[0][2] == "nx47-charts"
        for i in range(50, 60):  # a second burst within the same interval: held back
            st.apply(ev(EventKind.METRIC, MetricPayload(name="fit_prox_objective", value=1.0 / (i + 1), step=i),
                        stage="fit_prox"))
            r.submit(snapshot(st.charts))
        assert not done.wait(0.5)  # the clock has not moved: no second render yet
        t[0] += 1.0
        with r._cond:
            r._cond.notify()
        assert done.wait(30)
        assert len(got) == 2 and got[1][1] == st.charts.version  # then the newest snapshot, once
    finally:
        r.close()
