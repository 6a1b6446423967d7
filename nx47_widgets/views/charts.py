"""The charts panel: fit_prox objective, hyper-parameter grid, U-Net loss, validation scores."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.charts import ChartState
from nx47_widgets.views.base import Syncer, section
from nx47_widgets.views.svg import grid_table, svg_bar_chart, svg_line_chart

__all__ = ["ChartsPanel"]


class ChartsPanel:
    """fit_prox objective, hyper-parameter grid, U-Net loss, validation scores.

    Parameters
    ----------
    syncer : Syncer
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.objective = W.HTML("")
        self.grid = W.HTML("")
        self.loss = W.HTML("")
        self.scores = W.HTML("")
        self.widget = W.VBox([
            section("Charts"),
            W.HBox([self.objective, self.loss], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.grid, self.scores], layout=W.Layout(flex_flow="row wrap")),
        ])
        self.widget.add_class("nx47-charts")

    def render(self, state: ChartState) -> None:
        """Draw the series of ``state`` (an empty chart says why it is empty)."""
        self.syncer.set(self.objective, value=svg_line_chart(
            state.objective, title="fit_prox objective per iteration",
            empty=state.empty_text("fit_prox")))
        self.syncer.set(self.loss, value=svg_line_chart(
            state.loss, title="U-Net batch loss", empty=state.empty_text("unet")))
        self.syncer.set(self.grid, value=grid_table(state.grid, empty=state.empty_text("search")))
        self.syncer.set(self.scores, value=svg_bar_chart(
            state.val_scores, title="validation score per volume",
            empty=state.empty_text("validate")))
