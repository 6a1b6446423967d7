"""Views subscribe to state: every panel has one ``render(state)``, and the
registry re-renders a panel only when its state changed (by version), or on a
tick for the panels that show the time."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import time

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import Event, EventKind, MetricName, MetricPayload, ProgressPayload
from nx47_widgets import views
from nx47_widgets.app import Dashboard
from nx47_widgets.state import DashboardState
from nx47_widgets.views.registry import Views


class Counter:
    """A state: ``version`` says when it changed."""

    def __init__(self) -> None:
        self.version = 0


class Recorder:
    """A panel that records what it rendered."""

    def __init__(self) -> None:
        self.shown: list = []

    def render(self, state) -> None:
        self.shown.append(state)


def test_a_panel_renders_when_its_state_changed_and_only_then():
    a, b = Counter(), Counter()
    pa, pb = Recorder(), Recorder()
    reg = Views()
    reg.add(pa, lambda: a)
    reg.add(pb, lambda: b)
    assert reg.render() == [pa, pb]  # never rendered: both
    assert reg.render() == [] and reg.render(tick=True) == []  # nothing changed
    a.version += 1
    assert reg.render() == [pa]
    assert (len(pa.shown), len(pb.shown)) == (2, 1)
    assert reg.render(force=True) == [pa, pb]


def test_another_state_object_renders_even_at_the_same_version():
    holder = {"s": Counter()}
    p = Recorder()
    reg = Views()
    reg.add(p, lambda: holder["s"])
    reg.render()
    holder["s"] = Counter()  # a new run: a new state, version 0 again
    assert reg.render() == [p] and p.shown[-1] is holder["s"]


def test_a_time_panel_renders_on_every_tick_and_a_drawn_panel_waits_for_a_change():
    s = Counter()
    clock, drawn = Recorder(), Recorder()
    reg = Views()
    reg.add(clock, lambda: s, every_tick=True)
    reg.add(drawn, lambda: s, drawn=True)
    assert reg.render() == [clock]
    assert reg.render(tick=True) == [clock]
    assert reg.render() == []
    s.version += 1
    assert reg.render() == [clock, drawn]


def test_a_version_of_several_parts_and_only_the_panels_asked_for():
    st = DashboardState()
    p, q = Recorder(), Recorder()
    reg = Views()
    reg.add(p, lambda: st, version=lambda s: (s.heartbeat.version, s.results.version))
    reg.add(q, lambda: st.charts)
    reg.render()
    st.results.end_without_event(lost="gone")  # only the results part changes
    assert reg.render(q) == [] and reg.render(p) == [p]


def _panel_classes():
    for info in pkgutil.iter_modules(views.__path__):
        module = importlib.import_module(f"nx47_widgets.views.{info.name}")
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ \
                    and (name.endswith("Panel") or name.endswith("Table")) \
                    and name != "Panel" and not name.startswith("_"):
                yield cls


def test_every_panel_has_one_render_of_its_state():
    found = {cls.__name__ for cls in _panel_classes()}
    assert {"ProgressPanel", "HeartbeatPanel", "HeaderPanel", "LogPanel", "ChartsPanel",
            "ClusterPanel", "ResultsPanel", "PreviewPanel", "CoveragePanel", "RunsPanel",
            "QaPanel", "TopoTable"} <= found
    for cls in _panel_classes():
        params = list(inspect.signature(cls.render).parameters.values())[1:]
        assert params and params[0].name == "state", cls.__name__
        rest = [p for p in params[1:] if p.default is inspect.Parameter.empty]
        assert not rest, f"{cls.__name__}.render needs more than its state: {rest}"


def _ev(seq: int, kind: EventKind, payload) -> Event:
    return Event(seq=seq, ts=time.time(), t=0.0, kind=kind, stage="features", payload=payload)


@pytest.fixture
def dash(tmp_path):
    d = Dashboard(RunConfig(data_root=str(tmp_path / "none"), out_dir=str(tmp_path / "out")),
                  start_pump=False, auto_attach=False)
    yield d
    d.close()


def test_the_dashboard_renders_only_the_panels_whose_state_changed(dash, monkeypatch):
    rendered: list[str] = []
    for name in ("progress", "charts", "log", "cluster", "preview", "results", "header", "heartbeat"):
        panel = getattr(dash.panels, name)
        real = panel.render
        monkeypatch.setattr(panel, "render",
                            lambda state, *a, _n=name, _r=real, **k: (rendered.append(_n), _r(state, *a, **k)))
    dash.flush([], False)
    assert rendered == []  # nothing changed, no tick
    dash.flush([], True)
    assert sorted(rendered) == ["header", "heartbeat"]  # the time panels on a tick
    rendered.clear()
    dash.flush([_ev(1, EventKind.PROGRESS_UPDATE, ProgressPayload(
        step="features", step_index=2, step_count=9, step_done=1, step_total=4, file="",
        file_done=0, file_total=0, global_=0.1, eta_s=60.0))], False)
    assert "progress" in rendered and "header" in rendered
    assert not {"charts", "cluster", "preview"} & set(rendered)
    assert dash.panels.progress.bars["stage"].value == 0.25
    rendered.clear()
    dash.flush([_ev(2, EventKind.METRIC, MetricPayload(name=MetricName.FIT_PROX_OBJECTIVE,
                                                        value=1.5, step=1))], False)
    assert "charts" in rendered and "progress" not in rendered
