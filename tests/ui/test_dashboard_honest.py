"""What the page says is true: caps kept as set, a run's real outcome (fallback,
budget, skipped, killed, lost), problems named before Run (and no run),
overlays only where there is data, charts that say why they are empty,
readable statistics, and an ETA from the projection.

In-process: real ipywidgets objects read back, events fed by hand or by a
journal; a few real processes for killed and lost runs.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.run.resume import pid_alive
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import (
    BudgetPayload,
    Event,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    HeartbeatPayload,
    MetricPayload,
    PreviewPayload,
    ProgressPayload,
    RunStartPayload,
    StepPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_widgets.app import Dashboard, RunRefused
from nx47_widgets.lifecycle import read_killed
from nx47_widgets.session import RunSession
from nx47_widgets.settings import CAPS_HINT
from nx47_widgets.state import DashboardState, HeartbeatState, ProgressState
from nx47_widgets.state.outcome import Outcome, classify
from nx47_widgets.views.colours import OUTCOME_COLOURS

_seq = itertools.count()


def ev(kind, payload, *, stage="features", ts=None, t=0.0) -> Event:
    return Event(seq=next(_seq), ts=time.time() if ts is None else ts, t=t, kind=kind,
                 stage=stage, payload=payload)


def progress(done, total, *, step="features", glob=0.0, substep="", sd=0, st=0):
    return ProgressPayload(step=step, step_index=2, step_count=9, step_done=done,
                           step_total=total, substep=substep, substep_done=sd,
                           substep_total=st, global_=glob, eta_s=999.0)


@pytest.fixture(scope="module")
def ten_pairs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ten") / "data"
    generate_demo_dataset(root, n_train=10, n_test=1, shape=16, seed=2)
    return root


def dash(tmp_path, data_root, **cfg) -> Dashboard:
    base = dict(data_root=str(data_root), out_dir=str(tmp_path / "out"),
                max_train_volumes=4, max_val_volumes=2)
    base.update(cfg)
    return Dashboard(RunConfig(**base), start_pump=False)


def run_selection(data_root: Path, max_train: int, max_val: int, seed: int = 47) -> tuple[int, int]:
    """(train, val) the run selects for these caps (the pipeline's own selection)."""
    sel = select_coverage(discover(data_root).pairs, max_train_volumes=max_train,
                          max_val_volumes=max_val, seed=seed)
    return len(sel.train), len(sel.val)


def sleeper(ignore_term: bool = False) -> subprocess.Popen:
    """A process that lives until killed; it says "ready" once its SIGTERM handling is in place."""
    code = ("import signal, sys\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\nsignal.pause()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def journal_with_live_holder(out: Path, proc: subprocess.Popen) -> None:
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir=str(out), pid=proc.pid))
    bus.publish(EventKind.PROGRESS_UPDATE, progress(1, 4, glob=0.2))
    bus.close()
    (out / "run.lock").write_text(str(proc.pid))


# ---------------------------------------------------------------------------
# Bug 6: caps kept as set
# ---------------------------------------------------------------------------
def test_volume_caps_are_the_counts_the_run_selects(tmp_path, ten_pairs):
    d = dash(tmp_path, ten_pairs)
    try:
        assert CAPS_HINT in d.settings.caps_hint.value and "0 = all" in CAPS_HINT
        d.settings.max_train.value = 4
        assert d.settings.max_val.max == 6  # what training leaves of the 10 pairs
        d.settings.max_val.value = 6
        s = d.panels.coverage.last
        assert (s["n_train"], s["n_val"]) == run_selection(ten_pairs, 4, 6)
        d.settings.max_val.value = 3
        assert d.settings.max_train.max == 7
        d.settings.max_train.value = 7
        s = d.panels.coverage.last
        # what the run selects (scroll-aware: the held-out scroll's size may give fewer)
        assert (s["n_train"], s["n_val"]) == run_selection(ten_pairs, 7, 3)
        if (s["n_train"], s["n_val"]) != (7, 3):
            assert "scroll-aware split gives" in d.panels.coverage.html.value
        cfg = d.current_config()
        assert (cfg.max_train_volumes, cfg.max_val_volumes) == (7, 3)
        d.settings.max_train.value = 0  # 0 = all the pairs validation leaves
        last = d.panels.coverage.last
        assert (last["n_train"], last["n_val"]) == run_selection(ten_pairs, 0, 3)
        assert d.settings.max_val.max == 9
    finally:
        d.close()


def test_caps_over_the_data_are_set_to_the_split_and_the_page_says_so(tmp_path, ten_pairs):
    d = dash(tmp_path, ten_pairs, max_train_volumes=24, max_val_volumes=8)
    try:
        assert (d.settings.max_train.value, d.settings.max_val.value) == (8, 2)
        note = d.settings.caps_note.value
        assert "24" in note and "8 + 2" in note and "10 pairs" in note
        s = d.panels.coverage.last
        assert (s["n_train"], s["n_val"]) == run_selection(ten_pairs, 8, 2)
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Bug 7: outcomes with their own words and colours
# ---------------------------------------------------------------------------
def test_outcomes_have_their_own_words_and_colours():
    stats = {"counts": {"test": 2, "fallback_volumes": 2}, "stage_status": {"unet": "skipped"}}
    v = classify("ok", stats)
    assert v.outcome is Outcome.FALLBACK and "all 2 of 2" in v.words
    assert classify("ok", {"counts": {"test": 4, "fallback_volumes": 1}}).outcome is Outcome.FALLBACK
    assert classify("ok", {"stage_status": {"search": "budget"}}).outcome is Outcome.BUDGET
    assert classify("ok", {"stage_status": {"unet": "skipped"}}).outcome is Outcome.SKIPPED
    assert classify("ok", {"stage_status": {"unet": "ok"}}).outcome is Outcome.OK
    assert classify(None, killed="by Stop").outcome is Outcome.KILLED
    assert classify(None, lost="gone").outcome is Outcome.LOST
    assert classify("cancelled").outcome is Outcome.CANCELLED
    assert len(set(OUTCOME_COLOURS.values())) == len(OUTCOME_COLOURS)  # one colour each


def test_a_run_on_the_fallback_is_not_a_green_ok(tmp_path, ten_pairs):
    out = tmp_path / "out"
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="fb", out_dir=str(out), pid=1))
    bus.publish(EventKind.HEARTBEAT, HeartbeatPayload(
        state="FINISHED", since_progress_s=0.0, cpu_pct=50.0, worker_cpu_s=1.0, rss_mb=100.0,
        elapsed_s=5.0, budget_left_s=1.0, interval_s=1.0))
    bus.publish(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats={
        "counts": {"test": 2, "fallback_volumes": 2}, "fallback_ids": ["a", "b"],
        "stage_status": {"fit_prox": "budget"}, "journal_head": "f" * 64}))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=5.0))
    bus.close()
    d = dash(tmp_path, ten_pairs)
    try:
        d.pump.pump_once()
        html = d.panels.results.html.value
        assert "data-outcome='fallback'" in html and "fallback segmentation" in html
        # the status itself is in the fallback's colour (the journal's check stays green)
        assert f"color:{OUTCOME_COLOURS[Outcome.FALLBACK]}'>fallback segmentation<" in html
        assert "2 of 2 test volumes got the fallback" in html
        hb = d.panels.heartbeat.html.value
        assert "data-state='FINISHED'" in hb and "data-outcome='fallback'" in hb
        assert OUTCOME_COLOURS[Outcome.FALLBACK] in hb and OUTCOME_COLOURS[Outcome.OK] not in hb
        assert "fallback" in d.controls.status.value
    finally:
        d.close()


def test_a_finished_runs_heartbeat_stops_counting():
    hb = HeartbeatState(clock=lambda: 1000.0)
    hb.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1), ts=100.0))
    hb.apply(ev(EventKind.HEARTBEAT, HeartbeatPayload(
        state="ACTIVE", since_progress_s=0.0, cpu_pct=1.0, worker_cpu_s=1.0, rss_mb=1.0,
        elapsed_s=1.0, budget_left_s=1.0, interval_s=1.0), ts=110.0))
    hb.apply(ev(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=12), ts=112.0))
    assert hb.view(500.0).since_beat_s == pytest.approx(2.0)
    assert hb.view(5000.0).since_beat_s == pytest.approx(2.0)


def test_a_run_whose_process_died_reads_lost_and_its_lock_is_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = sleeper()
    journal_with_live_holder(out, proc)
    session = RunSession(str(out))
    try:
        session.attach(out)
        session.state.apply_many(session.drain())
        assert session.running and not session.check_end(time.monotonic())
        proc.kill()
        proc.wait()
        now = time.monotonic()
        assert not session.check_end(now)  # first it reads what is left of the journal
        assert session.check_end(now + 5.0)
        v = session.state.results.verdict
        assert v.outcome is Outcome.LOST and "without a final event" in v.words
        assert session.state.heartbeat.view().state == "LOST"
        assert not (out / "run.lock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_on_a_holder_that_ignores_it_ends_killed_and_recorded(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = sleeper(ignore_term=True)  # its SIGTERM handler is in place when it returns
    journal_with_live_holder(out, proc)
    session = RunSession(str(out))
    try:
        runner = session.attach(out)
        runner.stop_grace_s = 0.5
        session.state.apply_many(session.drain())
        assert "SIGTERM" in session.stop()
        now = time.monotonic() + 0.6  # the 0.5 s grace has passed (the session takes the time it is given)
        session.check_end(now)  # kills the holder
        assert not pid_alive(proc.pid) or proc.wait(5) is not None
        assert session.check_end(now + 5.0)
        v = session.state.results.verdict
        assert v.outcome is Outcome.KILLED and "did not end" in v.words
        assert read_killed(out)["pid"] == proc.pid
        assert not (out / "run.lock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------
# Bug 8: problems named before Run, and no run
# ---------------------------------------------------------------------------
def test_run_refuses_a_missing_data_root_with_an_inline_message(tmp_path):
    d = Dashboard(RunConfig(data_root=str(tmp_path / "nowhere"), out_dir=str(tmp_path / "out")),
                  start_pump=False)
    try:
        d.controls.run_button.click()
        assert d.runner is None
        assert "Data root" in d.controls.problems.value and "nowhere" in d.controls.problems.value
        assert "not started" in d.controls.status.value
        assert not (tmp_path / "out").exists()
    finally:
        d.close()


def test_run_refuses_an_output_folder_it_cannot_write(tmp_path, ten_pairs):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    d = dash(tmp_path, ten_pairs, out_dir=str(blocker / "run"))
    try:
        with pytest.raises(RunRefused, match="is a file"):
            d.run()
        assert d.runner is None and "is a file" in d.controls.problems.value
    finally:
        d.close()


def test_budget_out_of_range_is_reported_not_clamped(tmp_path, ten_pairs):
    d = dash(tmp_path, ten_pairs)
    try:
        d.settings.budget_min.value = 0.0
        assert d.settings.budget_min.value == 0.0  # kept as typed
        assert "Budget (min) must be between" in d.controls.problems.value
        d.controls.run_button.click()
        assert d.runner is None
        d.settings.budget_min.value = 10 ** 7
        assert "got 10000000" in d.controls.problems.value
        d.settings.budget_min.value = 30.0
        assert d.controls.problems.value == ""
    finally:
        d.close()


def test_a_busy_folder_offers_attach_instead_of_run(tmp_path, ten_pairs):
    out = tmp_path / "out"
    out.mkdir()
    proc = sleeper()
    journal_with_live_holder(out, proc)
    try:
        d = Dashboard(RunConfig(data_root=str(ten_pairs), out_dir=str(out)), start_pump=False,
                      auto_attach=False)
        try:
            assert d.controls.run_button.disabled and d.controls.run_button.description == "Run (folder busy)"
            assert d.controls.attach_button.description == "Attach to the running run"
            assert "busy" in d.controls.problems.value
            with pytest.raises(RunRefused, match="busy"):
                d.run()
            d.controls.attach_button.click()
            assert d.runner is not None and d.running
            assert "attached" in d.controls.status.value and f"pid {proc.pid}" in d.controls.status.value
        finally:
            d.close()
    finally:
        proc.kill()


# ---------------------------------------------------------------------------
# Bug 9: overlays, legend, charts, statistics, journal head
# ---------------------------------------------------------------------------
def test_overlays_are_offered_only_where_the_volume_has_data(tmp_path, ten_pairs):
    d = dash(tmp_path, ten_pairs)
    try:
        st = d.state
        st.apply(ev(EventKind.PREVIEW, PreviewPayload(
            volume_id="t1", split="train", shape=[16, 16, 16], image_path="/x/i.tif",
            label_path="/x/l.tif")))
        d.panels.preview.render(d.state)
        ov = d.panels.preview.overlays
        assert not ov["label"].disabled
        assert ov["pred"].disabled and ov["prob"].disabled and ov["error"].disabled
        assert "training volumes are not segmented" in d.panels.preview.overlay_note.value
        assert d.panels.preview.make_request().overlays == ("label",)
        st.apply(ev(EventKind.PREVIEW, PreviewPayload(
            volume_id="s1", split="test", shape=[16, 16, 16], image_path="/x/i.tif",
            pred_path="/x/p.tif", prob_path="/x/q.tif")))
        d.panels.preview.render(d.state)
        assert ov["label"].disabled and ov["error"].disabled and not ov["pred"].disabled
        assert "test volumes have none" in d.panels.preview.overlay_note.value
        legend = d.panels.preview.legend.value
        for words in ("label: surface", "prediction", "false positive", "false negative", "probability"):
            assert words in legend
        assert d.panels.preview.canvas.widget.layout.display == "none"  # no empty picture before a preview
    finally:
        d.close()


def test_charts_say_why_they_are_empty_and_show_single_points():
    st = DashboardState()
    st.apply(ev(EventKind.STEP, StepPayload(phase="end", status="skipped", message="U-Net off"),
                stage="unet"))
    st.apply(ev(EventKind.METRIC, MetricPayload(name="fit_prox_objective", value=0.5, step=3),
                stage="fit_prox"))
    from nx47_widgets.views import ChartsPanel, Syncer

    from nx47_widgets.views.mpl import chart_figure, snapshot

    panel = ChartsPanel(Syncer())
    try:
        panel.render(st.charts)
        assert "no data yet" not in panel.loss.value and "unet skipped: U-Net off" in panel.loss.value
        assert "1 point(s)" in panel.objective.value
        assert "the stage has not run" in panel.scores.value
    finally:
        panel.close()
    fig = chart_figure(snapshot(st.charts))
    objective_line = fig.axes[0].lines[0]
    assert len(objective_line.get_xdata()) == 1 and objective_line.get_marker() == "o"  # one point, drawn
    assert "unet skipped: U-Net off" in fig.axes[1].texts[0].get_text()


def test_the_search_heatmap_keeps_a_thinned_candidate_apart_from_the_same_pair_unthinned():
    from nx47_widgets.views.mpl import chart_figure, snapshot

    st = DashboardState()
    for thin, value in ((False, 0.61), (True, 0.64)):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="search_mean_score", value=value, extra={
            "l1": 1e-4, "l2": 1e-3, "low": 0.55, "high": 0.7, "thin": thin, "n_volumes": 3}), stage="search"))
    fig = chart_figure(snapshot(st.charts))
    heat = next(ax for ax in fig.axes if ax.get_title().startswith("search"))
    labels = [t.get_text() for t in heat.get_yticklabels()]
    assert labels == ["l1=0.0001 l2=0.001", "l1=0.0001 l2=0.001 thin"]
    assert sorted(t.get_text() for t in heat.texts) == ["0.610", "0.640"]


def test_the_search_heatmap_keeps_each_closing_radius_on_its_own_row():
    from nx47_widgets.views.mpl import chart_figure, snapshot

    st = DashboardState()
    for radius, value in (([1, 2, 2], 0.61), ([1, 1, 1], 0.66)):
        st.apply(ev(EventKind.METRIC, MetricPayload(name="search_mean_score", value=value, extra={
            "l1": 1e-4, "l2": 1e-3, "low": 0.55, "high": 0.7, "thin": True, "closing_radius": radius,
            "n_volumes": 3}), stage="search"))
    fig = chart_figure(snapshot(st.charts))
    heat = next(ax for ax in fig.axes if ax.get_title().startswith("search"))
    labels = [t.get_text() for t in heat.get_yticklabels()]
    assert labels == ["l1=0.0001 l2=0.001 thin closing 1x1x1", "l1=0.0001 l2=0.001 thin closing 1x2x2"]
    assert sorted(t.get_text() for t in heat.texts) == ["0.610", "0.660"]


def test_global_stats_are_readable_tables_with_one_journal_head(tmp_path, ten_pairs):
    out = tmp_path / "out"
    per_volume = {f"v{i}": {"score": i / 100, "volume_id": f"v{i}"} for i in range(30)}
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="s", out_dir=str(out), pid=1))
    bus.publish(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats={
        "validation": {"mean_score": 0.145, "per_volume": per_volume},
        "counts": {"train": 5, "val": 30, "test": 2, "fallback_volumes": 0},
        "best": {"l1": 0.001, "l2": 0.01, "threshold": 0.5},
        "coverage": {"train_ids": [str(i) for i in range(40)]},
        "journal_head": "a" * 64}))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=5.0))
    bus.close()
    d = dash(tmp_path, ten_pairs)
    try:
        d.pump.pump_once()
        html = d.panels.results.html.value
        assert "class='nx47-score'>0.1450<" in html
        assert all(f">v{i}<" in html for i in range(30))  # every volume, worst first
        assert html.index(">v0<") < html.index(">v29<")
        assert "{'" not in html and "..." not in html  # no Python dict dumps, nothing cut
        assert "a" * 16 not in html  # the stats' pre-final head is not shown
        assert html.count("head ") == 1  # one journal head: the verified one
    finally:
        d.close()


# ---------------------------------------------------------------------------
# Bug 10: progress inside the preflight, ETA from the projection
# ---------------------------------------------------------------------------
def test_preflight_sub_steps_move_the_bars():
    st = ProgressState()
    st.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1)))
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin"), stage="preflight"))
    st.apply(ev(EventKind.PROGRESS_UPDATE, progress(1.05, 6, step="preflight", glob=0.02,
                                                    substep="search: fit l1=0.01", sd=11, st=30),
                stage="preflight"))
    assert st.bars["stage"].value == pytest.approx(1.05 / 6)
    assert st.bars["substep"].value == pytest.approx(11 / 30)
    assert "search: fit" in st.bars["substep"].text and "11 of 30" in st.bars["substep"].text
    assert "ETA after the preflight" in st.bars["global"].text


def test_eta_follows_the_projection_and_its_reprojections():
    st = ProgressState()
    st.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1)))
    per_stage = {"features": 10.0, "search": 20.0, "fit_prox": 30.0, "unet": 0.0,
                 "validate": 5.0, "segment": 4.0, "package": 1.0}
    st.apply(ev(EventKind.BUDGET, BudgetPayload(decision="projection", message="p", projected_s=70.0,
                                                extra={"per_stage": per_stage}), stage="preflight"))
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin"), stage="features"))
    st.apply(ev(EventKind.PROGRESS_UPDATE, progress(5, 10, step="features", glob=0.2)))
    assert st.timeline.eta_s() == pytest.approx(65.0)
    assert "ETA 1m05s" in st.bars["global"].text and "projection" in st.bars["global"].text
    st.apply(ev(EventKind.STEP, StepPayload(phase="end", status="ok", duration_s=20.0)))
    st.apply(ev(EventKind.BUDGET, BudgetPayload(
        decision="reprojection", message="r", projected_s=120.0,
        extra={"actual_over_projected": 2.0, "stage": "features"})))
    st.apply(ev(EventKind.STEP, StepPayload(phase="begin"), stage="search"))
    st.apply(ev(EventKind.PROGRESS_UPDATE, progress(0, 4, step="search", glob=0.3), stage="search"))
    assert st.timeline.eta_s() == pytest.approx(2.0 * 60.0)  # twice the projection left
    rows = {r["stage"]: r for r in st.timeline.rows()}
    assert rows["features"]["actual_s"] == 20.0 and rows["features"]["projected_s"] == 10.0
    assert rows["search"]["running"]


# ---------------------------------------------------------------------------
# Run over an ended run asks first; a fixed problem clears the refusal
# ---------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_run_over_an_ended_run_asks_first_and_changes_nothing_until_confirmed(tmp_path, ten_pairs):
    out = tmp_path / "out"
    out.mkdir()
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="old", out_dir=str(out), pid=1))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=5.0))
    bus.close()
    before = _files(out)
    ran = []
    cfg = RunConfig(data_root=str(ten_pairs), out_dir=str(out), max_train_volumes=4,
                    max_val_volumes=2)
    d = Dashboard(cfg, start_pump=False, job=lambda config, cancel, sink: ran.append(config))
    try:
        d.controls.run_button.click()
        assert d.controls.asking and not ran and not d.running
        assert str(out) in d.controls.confirm_text.value and "stale-" in d.controls.confirm_text.value
        assert "not started" in d.controls.status.value
        d.controls.cancel_button.click()
        assert not d.controls.asking and _files(out) == before
        d.controls.run_button.click()
        d.settings.out_dir.value = str(tmp_path / "elsewhere")  # another folder withdraws the question
        assert not d.controls.asking
        d.settings.out_dir.value = str(out)
        d.controls.run_button.click()
        assert _files(out) == before
        d.controls.confirm_button.click()  # the explicit action
        assert d.runner is not None and d.runner.join(10)
        assert ran and ran[0].out_dir == str(out)
    finally:
        d.close()


def test_a_fixed_problem_clears_the_refusal(tmp_path, ten_pairs):
    d = dash(tmp_path, ten_pairs)
    try:
        d.settings.budget_min.value = 0.0
        assert "refused" in d.panels.coverage.html.value and "6.0s" not in d.panels.coverage.html.value
        d.controls.run_button.click()
        assert "RunRefused" in d.controls.status.value and "Budget" in d.controls.status.value
        d.settings.budget_min.value = 30.0
        assert "RunRefused" not in d.controls.status.value
        assert d.panels.coverage.last["budget_s"] == 1800.0
    finally:
        d.close()
