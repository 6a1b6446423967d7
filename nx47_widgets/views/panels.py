"""Every panel of the dashboard page, by name, and which state each shows."""

from __future__ import annotations

import threading
from typing import Any, Callable

from nx47_pipeline.telemetry.events import EventKind

from nx47_widgets.state.dashboard import DashboardState
from nx47_widgets.state.runs import RunSummary
from nx47_widgets.views.base import Syncer
from nx47_widgets.views.charts import ChartsPanel
from nx47_widgets.views.cluster import ClusterPanel
from nx47_widgets.views.coverage import CoveragePanel
from nx47_widgets.views.header import HeaderPanel
from nx47_widgets.views.heartbeat import HeartbeatPanel
from nx47_widgets.views.log import LogPanel
from nx47_widgets.views.page import PageBridge
from nx47_widgets.views.preview import PreviewPanel
from nx47_widgets.views.progress import ProgressPanel
from nx47_widgets.views.registry import Views
from nx47_widgets.views.results import ResultsPanel
from nx47_widgets.views.runs import RunsPanel

__all__ = ["Panels"]


class Panels:
    """The page's panels; :meth:`register` pairs those of the run with its state.

    Parameters
    ----------
    syncer : Syncer
    state : DashboardState
        The run shown first (the slice viewer and the log start with its parts).
    lock : threading.RLock
        The dashboard's: user changes and the UI pump's flush never interleave.
    page : PageBridge
        Saves the submission in the browser.
    runs_root : str
        The folder the runs page lists first.
    scan : callable
        ``scan(root) -> list[RunSummary]``: the runs under a folder.
    on_open : callable
        ``on_open(folder)``: open a run of the runs page.
    links : bool
        The runs page's rows link to their own address (under Voila).
    views : Views
        The view registry (the slice viewer renders through it after a user's action).

    Attributes
    ----------
    header, progress, heartbeat, cluster, coverage, preview, log, charts, results, runs
        :class:`~nx47_widgets.views.header.HeaderPanel`, ...
    """

    def __init__(self, syncer: Syncer, state: DashboardState, *, lock: threading.RLock,
                 page: PageBridge, runs_root: str, scan: Callable[[str], list[RunSummary]],
                 on_open: Callable[[str], Any], links: bool, views: Views) -> None:
        self.progress = ProgressPanel(syncer)
        self.header = HeaderPanel(syncer, self.progress.widget)
        self.cluster = ClusterPanel(syncer)
        self.heartbeat = HeartbeatPanel(syncer)
        self.coverage = CoveragePanel(syncer)
        self.preview = PreviewPanel(syncer, state.preview, lock=lock, scores=state.scores,
                                    on_change=lambda: views.render(self.preview))
        self.log = LogPanel(syncer, state.log, [k.value for k in EventKind], lock=lock)
        self.charts = ChartsPanel(syncer)
        self.results = ResultsPanel(syncer, page=page)
        self.runs = RunsPanel(syncer, runs_root, scan=scan, on_open=on_open, links=links)

    def register(self, views: Views, state: Callable[[], DashboardState]) -> None:
        """Register each panel of the run with what it shows of ``state()``.

        The header and the heartbeat also render on every tick (they show the
        time since the run started, since its last beat); the slice viewer
        shows its (empty) state already.  The coverage and the runs panels
        show the controls and the output root, not the run: the dashboard
        renders them when those change.
        """
        part = lambda name: lambda: getattr(state(), name)  # noqa: E731
        views.add(self.progress, part("progress"))
        views.add(self.heartbeat, state, version=lambda s: (s.heartbeat.version, s.results.version),
                  every_tick=True)
        views.add(self.header, state, every_tick=True)
        views.add(self.preview, state, version=lambda s: (s.preview.version, s.scores.version),
                  drawn=True)
        views.add(self.log, part("log"))
        views.add(self.charts, part("charts"))
        views.add(self.cluster, part("cluster"))
        views.add(self.results, state,
                  version=lambda s: (s.results.version, s.progress.timeline.version))

    def close(self) -> None:
        """Stop the slice viewer's and the charts' renderer threads."""
        self.preview.close()
        self.charts.close()
