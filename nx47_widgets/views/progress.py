"""The progress panel: four labelled bars, full-width under the run header."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.progress import STYLE_INFO, ProgressState
from nx47_widgets.views.base import Syncer, h

__all__ = ["ProgressPanel"]


class ProgressPanel:
    """Four labelled FloatProgress bars: global, stage, sub-step, file.

    Parameters
    ----------
    syncer : Syncer
    """

    LABELS = {"global": "Overall", "stage": "Stage", "substep": "Sub-step", "file": "File"}

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.bars: dict[str, W.FloatProgress] = {}
        self.texts: dict[str, W.HTML] = {}
        rows = []
        for name in ProgressState.NAMES:
            bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style=STYLE_INFO,
                                  description=self.LABELS[name],
                                  layout=W.Layout(width="auto", flex="1 1 68%", min_width="200px"))
            bar.add_class(f"nx47-bar-{name}")
            text = W.HTML("", layout=W.Layout(width="auto", flex="1 1 32%", min_width="240px"))
            text.add_class(f"nx47-bartext-{name}")
            self.bars[name], self.texts[name] = bar, text
            row = W.HBox([bar, text], layout=W.Layout(width="100%"))
            row.add_class("nx47-bar-row")
            rows.append(row)
        self.widget = W.VBox(rows, layout=W.Layout(width="100%"))
        self.widget.add_class("nx47-progress")

    def render(self, state: ProgressState) -> None:
        """Copy the bars of ``state`` into the widgets."""
        for name, bar_state in state.bars.items():
            self.syncer.set(self.bars[name], value=round(bar_state.value, 4),
                            bar_style=bar_state.style)
            self.syncer.set(self.texts[name], value=h(bar_state.text))
