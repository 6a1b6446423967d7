"""ipywidgets views over the plain-Python states of :mod:`nx47_widgets.state`.

Each panel owns its widgets and has one ``render(state)`` which copies the
state into the widgets, setting a trait only when its value changed (every
change is one comm message, so :class:`Syncer` counts them).  Panels never
read events themselves: :class:`~nx47_widgets.views.registry.Views` holds
(state, panel) pairs (:meth:`~nx47_widgets.views.panels.Panels.register`),
and after the UI pump applied a batch it renders the panels whose state has
another version (and, on a tick, those that show the time).  Charts are drawn with matplotlib on a background thread
(:mod:`~nx47_widgets.views.mpl`), at most about once per second.
"""

from nx47_widgets.views.base import Syncer
from nx47_widgets.views.charts import ChartsPanel
from nx47_widgets.views.controls import RunControls
from nx47_widgets.views.coverage import CoveragePanel
from nx47_widgets.views.heartbeat import HeartbeatPanel
from nx47_widgets.views.log import LogPanel
from nx47_widgets.views.preview import PreviewPanel
from nx47_widgets.views.progress import ProgressPanel
from nx47_widgets.views.results import ResultsPanel
from nx47_widgets.views.svg import grid_table, svg_bar_chart, svg_line_chart

__all__ = [
    "Syncer",
    "ProgressPanel",
    "HeartbeatPanel",
    "CoveragePanel",
    "PreviewPanel",
    "LogPanel",
    "ChartsPanel",
    "ResultsPanel",
    "RunControls",
    "svg_line_chart",
    "svg_bar_chart",
    "grid_table",
]
