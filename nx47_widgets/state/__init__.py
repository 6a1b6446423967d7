"""Plain-Python dashboard state: reducers that take :class:`Event` objects.

The widgets in :mod:`nx47_widgets.views` are thin views over these objects.
Every state object has ``apply(event) -> bool`` (True when something visible
changed) and a ``version`` counter that increases on every visible change, so
the UI pump re-renders only what changed.  Nothing here imports ipywidgets:
tests drive the states directly with synthetic events.

Modules: :mod:`~nx47_widgets.state.progress` (the four bars),
:mod:`~nx47_widgets.state.heartbeat` (the light and its stall detector),
:mod:`~nx47_widgets.state.coverage` (discovery and the budget projection),
:mod:`~nx47_widgets.state.preview` (the slice previewer's selection),
:mod:`~nx47_widgets.state.log` (the event log), :mod:`~nx47_widgets.state.charts`
(metric series), :mod:`~nx47_widgets.state.results` (status, submission,
journal verification), :mod:`~nx47_widgets.state.cluster` (the run's Dask
cluster, from ``cluster.json``), :mod:`~nx47_widgets.state.topo` (per-volume
validation records: TopoScore by dimension) and :mod:`~nx47_widgets.state.dashboard` (all
of them).
"""

from nx47_widgets.state.charts import ChartState
from nx47_widgets.state.coverage import CoverageModel, scan_coverage
from nx47_widgets.state.dashboard import DashboardState
from nx47_widgets.state.heartbeat import WAITING, HeartbeatState, HeartbeatView
from nx47_widgets.state.log import LEVELS, LogEntry, LogState, event_level
from nx47_widgets.state.preview import AXES, PreviewState
from nx47_widgets.state.progress import (
    STYLE_DANGER,
    STYLE_INFO,
    STYLE_SUCCESS,
    STYLE_WARNING,
    BarState,
    ProgressState,
)
from nx47_widgets.state.results import ResultsState

__all__ = [
    "AXES",
    "BarState",
    "ChartState",
    "CoverageModel",
    "DashboardState",
    "event_level",
    "HeartbeatState",
    "HeartbeatView",
    "LEVELS",
    "LogEntry",
    "LogState",
    "PreviewState",
    "ProgressState",
    "ResultsState",
    "scan_coverage",
    "STYLE_DANGER",
    "STYLE_INFO",
    "STYLE_SUCCESS",
    "STYLE_WARNING",
    "WAITING",
]
