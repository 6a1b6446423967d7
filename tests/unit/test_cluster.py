"""The Dask panel: ``cluster.json`` read into :class:`ClusterState` and drawn by
:class:`ClusterPanel` (shown, hidden without a file, a malformed file named,
stale while running, closed, an earlier run's file left out)."""

from __future__ import annotations

import json
import os

import pytest

from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.telemetry.events import Event, EventKind, ExecCompletePayload, RunStartPayload
from nx47_widgets.state.cluster import (
    CLOSED,
    ENDED,
    MALFORMED,
    STALE,
    UP,
    ClusterState,
    parse_cluster,
)
from nx47_widgets.views.base import Syncer
from nx47_widgets.views.cluster import ClusterPanel, cluster_html

T0 = 1_733_112_345.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def full(**over) -> dict:
    d = {"scheduler": "tcp://10.0.0.5:8786", "dashboard_link": "http://127.0.0.1:8787/status",
         "workers": [{"name": "w-0", "address": "tcp://10.0.0.6:40001", "nthreads": 1,
                      "memory_bytes": 412_000_000, "memory_limit": 1_000_000_000, "tasks_processing": 1},
                     {"name": "w-1", "address": "tcp://10.0.0.7:40001", "nthreads": 2,
                      "memory_bytes": 950_000_000, "memory_limit": 1_000_000_000, "tasks_processing": 2}],
         "tasks_in_flight": 3, "tasks_done": 10, "updated": T0, "closed": False}
    d.update(over)
    return d


def start(out, ts: float = T0 - 60) -> Event:
    return Event(seq=0, ts=ts, t=0.0, kind=EventKind.RUN_START, stage="",
                 payload=RunStartPayload(run_id="r", out_dir=str(out), pid=os.getpid()))


def end() -> Event:
    return Event(seq=9, ts=T0, t=1.0, kind=EventKind.EXEC_COMPLETE, stage="",
                 payload=ExecCompletePayload(status="ok"))


def setup(tmp_path, obj=None, text=None):
    clock = Clock()
    if obj is not None:
        write_json(RunFolder(tmp_path).cluster, obj)
    if text is not None:
        (RunFolder(tmp_path).cluster).write_text(text)
    st = ClusterState(clock=clock)
    st.apply(start(tmp_path))
    panel = ClusterPanel(Syncer())
    panel.render(st)
    return st, panel, clock


def test_a_cluster_file_is_shown_with_scheduler_workers_tasks_memory_and_the_dask_link(tmp_path):
    st, panel, _ = setup(tmp_path, full())
    assert st.visible and st.condition == UP and panel.shown
    html = panel.html.value
    assert "tcp://10.0.0.5:8786" in html
    assert "<b class='nx47-n-workers'>2</b> workers" in html
    assert "<b class='nx47-in-flight'>3</b> in flight" in html and "<b class='nx47-done'>10</b> done" in html
    assert html.count("class='nx47-worker'") == 2 and "w-0" in html and "w-1" in html
    assert "412.0 MB / 1.0 GB" in html and "data-frac='0.950'" in html
    assert ("<a class='nx47-dask-link' href='http://127.0.0.1:8787/status' target='_blank'" in html)
    assert "data-condition='up'" in html


def test_no_cluster_file_hides_the_panel(tmp_path):
    st, panel, _ = setup(tmp_path)
    assert not st.visible and st.condition is None
    assert not st.apply(start(tmp_path)) and st.version == 0  # nothing to redraw
    assert not panel.shown and panel.html.value == ""
    # the file appears later (the cluster started): shown on the next poll
    write_json(RunFolder(tmp_path).cluster, full())
    assert st.poll(running=True)
    panel.render(st)
    assert panel.shown


@pytest.mark.parametrize("text, says", [
    ("{not json", "malformed cluster.json"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps(full(workers=5)), "'workers' should be a list"),
    (json.dumps(full(tasks_done="ten")), "'tasks_done' should be int or float"),
    (json.dumps(full(workers=[{"name": "w", "memory_bytes": True}])), "workers[0]: 'memory_bytes'"),
])
def test_a_malformed_file_is_named_in_the_panel_never_raised(tmp_path, text, says):
    st, panel, _ = setup(tmp_path, text=text)
    assert st.condition == MALFORMED and panel.shown
    assert str(RunFolder(tmp_path).cluster) in st.problem and says in st.problem
    assert str(RunFolder(tmp_path).cluster) in panel.html.value
    assert "data-condition='malformed'" in panel.html.value


def test_missing_fields_of_an_older_file_are_unknown_not_errors(tmp_path):
    st, panel, _ = setup(tmp_path, {"scheduler": "local", "workers": [{"address": "tcp://a:1"}]})
    assert st.condition == UP and not st.problem
    w = st.snapshot.workers[0]
    assert w.name == "tcp://a:1" and w.memory_bytes is None and w.memory_frac is None
    html = panel.html.value
    assert "<b class='nx47-in-flight'>?</b> in flight" in html and "? (no limit)" in html
    assert "no Dask dashboard link reported" in html
    assert parse_cluster({}).workers is None


def test_stale_while_running_then_ended_then_closed(tmp_path):
    st, panel, clock = setup(tmp_path, full())
    clock.t = T0 + 5
    assert st.poll(running=True) and st.condition == UP
    clock.t = T0 + 11
    assert st.poll(running=True) and st.condition == STALE
    panel.render(st)
    assert "stale: no update for 11 s while the run is running" in panel.html.value
    # the run is gone without closing its cluster: not claimed stale, nor closed
    assert st.poll(running=False) and st.condition == ENDED
    panel.render(st)
    assert "not reported closed" in panel.html.value
    # the writer's last rewrite says closed
    write_json(RunFolder(tmp_path).cluster, full(closed=True, updated=T0 + 12, tasks_in_flight=0))
    assert st.poll(running=True) and st.condition == CLOSED
    panel.render(st)
    assert "closed (last update" in panel.html.value and "data-condition='closed'" in panel.html.value


def test_exec_complete_ends_the_run_for_the_panel(tmp_path):
    st, _, clock = setup(tmp_path, full())
    clock.t = T0 + 30
    st.apply(end())
    assert st.condition == ENDED


def test_a_file_left_by_an_earlier_run_in_the_folder_is_not_shown(tmp_path):
    clock = Clock()
    write_json(RunFolder(tmp_path).cluster, full(updated=T0 - 3600, closed=True))
    st = ClusterState(clock=clock)
    st.apply(start(tmp_path, ts=T0 - 60))
    assert not st.visible
    assert cluster_html(st) == ""


def test_poll_rereads_only_a_changed_file_and_reports_only_visible_changes(tmp_path, monkeypatch):
    import nx47_widgets.state.cluster as mod

    reads = []
    real = mod.read_cluster
    monkeypatch.setattr(mod, "read_cluster", lambda p: reads.append(p) or real(p))
    st, _, clock = setup(tmp_path, full())
    assert len(reads) == 1
    assert not st.poll(running=True) and len(reads) == 1
    write_json(RunFolder(tmp_path).cluster, full(tasks_done=11, updated=T0 + 2))  # atomic rewrite
    clock.t = T0 + 2
    assert st.poll(running=True) and st.snapshot.tasks_done == 11 and len(reads) == 2


def test_the_dashboard_shows_the_panel_of_the_folder_it_opens(tmp_path):
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.telemetry.bus import EventBus
    from nx47_pipeline.telemetry.journal import JournalSink
    from nx47_widgets.app import Dashboard

    bus = EventBus()
    bus.attach(JournalSink(tmp_path / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir=str(tmp_path), pid=1))
    bus.publish(EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok"))
    bus.close()
    write_json(RunFolder(tmp_path).cluster, full(closed=True, updated=None))
    d = Dashboard(RunConfig(data_root=str(tmp_path / "none"), out_dir=str(tmp_path)), start_pump=False)
    try:
        d.pump.pump_once()
        assert d.panels.cluster.shown and d.state.cluster.condition == CLOSED
        assert "w-1" in d.panels.cluster.html.value
        (RunFolder(tmp_path).cluster).unlink()
        d.flush([], True)
        assert not d.panels.cluster.shown
    finally:
        d.close()
