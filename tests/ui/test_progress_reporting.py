"""Progress as the page reports it: heartbeat words that agree with the age of
the last progress, and the search's heat map filling in per candidate."""

from __future__ import annotations

import itertools

import pytest

from nx47_pipeline.telemetry.events import (ConfigPayload, Event, EventKind, HeartbeatPayload, MetricPayload,
                                            ProgressPayload, RunStartPayload, StepPayload, StepPhase)
from nx47_widgets.state import HeartbeatState
from nx47_widgets.state.charts import ChartState

_seq = itertools.count()


def ev(kind, payload, *, ts, stage="search"):
    return Event(seq=next(_seq), ts=ts, t=ts - 1000.0, kind=kind, stage=stage, payload=payload)


def beat(state, since_progress, interval=15.0):
    return HeartbeatPayload(state=state, since_progress_s=since_progress, cpu_pct=98.0, worker_cpu_s=1.0,
                            rss_mb=100.0, elapsed_s=1.0, budget_left_s=None, interval_s=interval)


def progress(done, total=10):
    return ProgressPayload(step="search", step_index=3, step_count=9, step_done=done, step_total=total)


def test_heartbeat_words_follow_the_age_of_the_last_progress():
    """A beat said ACTIVE; 16 s later without progress the light says COMPUTING, not
    "active: progress is being reported" beside "last progress 16 s ago"."""
    now = [1000.0]
    hb = HeartbeatState(clock=lambda: now[0])
    hb.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1), ts=1000.0))
    hb.apply(ev(EventKind.HEARTBEAT, beat("ACTIVE", 0.0), ts=1000.0))
    now[0] = 1004.0
    v = hb.view()
    assert v.state == "ACTIVE" and v.words.startswith("active")
    now[0] = 1016.0  # before the next beat (15 s) would say so
    v = hb.view()
    assert v.since_progress_s == pytest.approx(16.0)
    assert v.state == "COMPUTING" and v.words.startswith("computing")
    # progress arrives: ACTIVE again at once, even though the last beat said COMPUTING
    hb.apply(ev(EventKind.HEARTBEAT, beat("COMPUTING", 17.0), ts=1017.0))
    hb.apply(ev(EventKind.PROGRESS_UPDATE, progress(3), ts=1018.0))
    now[0] = 1019.0
    assert hb.view().state == "ACTIVE"
    now[0] = 1024.0
    assert hb.view().state == "COMPUTING"


def test_the_run_s_progress_gap_sets_when_the_light_stops_saying_active():
    now = [1000.0]
    hb = HeartbeatState(clock=lambda: now[0])
    hb.apply(ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1), ts=1000.0))
    hb.apply(ev(EventKind.CONFIG, ConfigPayload(config={"progress_max_gap_s": 2.0,
                                                         "heartbeat_interval_s": 15.0}), ts=1000.0))
    hb.apply(ev(EventKind.PROGRESS_UPDATE, progress(1), ts=1000.0))
    now[0] = 1001.5
    assert hb.view().state == "ACTIVE"
    now[0] = 1002.5
    assert hb.view().state == "COMPUTING"
    # a beat's STALLED is not overruled by the age rule, only by fresh progress
    hb.apply(ev(EventKind.HEARTBEAT, beat("STALLED", 70.0), ts=1070.0))
    now[0] = 1071.0
    assert hb.view().state == "STALLED"


def test_the_search_heat_map_fills_in_per_candidate():
    """Each candidate's score is a cell as soon as its METRIC arrives; a running
    search says so instead of "the stage has not run"."""
    charts = ChartState()
    assert "has not run" in charts.empty_text("search")
    charts.apply(ev(EventKind.STEP, StepPayload(phase=StepPhase.BEGIN), ts=1000.0))
    assert "running" in charts.empty_text("search") and "has not run" not in charts.empty_text("search")
    for j, score in enumerate((0.41, 0.52)):
        extra = {"volume_id": "v1", "l1": 1e-4, "l2": 1e-3, "low": 0.3 + 0.1 * j, "high": 0.5,
                 "thin": False, "closing_radius": [1, 2, 2], "min_size": 100, "plug_size": 0}
        assert charts.apply(ev(EventKind.METRIC, MetricPayload(name="search_score", value=score, extra=extra),
                               ts=1001.0 + j))
        assert len(charts.grid) == j + 1 and charts.grid[j]["value"] == pytest.approx(score)
