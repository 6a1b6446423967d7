"""The charts panel: fit_prox objective, U-Net loss, the hyper-parameter grid
as a heat map, validation scores worst first — drawn with matplotlib off the
kernel's main thread (:mod:`~nx47_widgets.views.mpl`), at most about once per
second, with a text line per chart that says what it holds or why it is empty
and the grid as a readable table."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.charts import ChartState
from nx47_widgets.views.base import Syncer, section
from nx47_widgets.views.mpl import DEFAULT_WIDTH_PX, ChartRenderer, snapshot
from nx47_widgets.views.svg import grid_table

__all__ = ["ChartsPanel"]


def _caption(title: str, points: list, empty: str) -> str:
    if not points:
        return f"<span style='font-size:12px'><b>{title}</b>: {empty}</span>"
    x, y = points[-1]
    return (f"<span style='font-size:12px'><b>{title}</b>: {len(points)} point(s), "
            f"last {y:.4g} at {x:g}</span>")


class ChartsPanel:
    """Charts of a run.

    Parameters
    ----------
    syncer : Syncer
    min_interval_s : float
        Smallest time between two chart renders.
    """

    def __init__(self, syncer: Syncer, *, min_interval_s: float = 1.0) -> None:
        self.syncer = syncer
        self.objective = W.HTML("")
        self.loss = W.HTML("")
        self.scores = W.HTML("")
        self.grid = W.HTML("")
        # shown at the width it was drawn for (CSS pixels): one PNG pixel per device pixel
        self.image = W.Image(format="png", layout=W.Layout(width=f"{DEFAULT_WIDTH_PX}px", height="auto", max_width="100%",
                                                           display="none"))
        self.image.add_class("nx47-charts-image")
        self.width_px, self.dpr = float(DEFAULT_WIDTH_PX), 1.0
        self.renderer = ChartRenderer(self._on_png, min_interval_s=min_interval_s, with_size=True)
        # the box whose width the page reports (the charts are drawn that wide)
        box = W.Box([self.image], layout=W.Layout(width="100%"))
        box.add_class("nx47-charts-box")
        self.widget = W.VBox([
            section("Charts"),
            W.VBox([self.objective, self.loss, self.scores]),
            box,
            self.grid,
        ])
        self.widget.add_class("nx47-charts")

    def _on_png(self, png: bytes, version: int, size: tuple[float, float] = (DEFAULT_WIDTH_PX, 1.0)) -> None:
        self.syncer.set(self.image, value=png)
        self.syncer.set(self.image.layout, display="", width=f"{round(size[0])}px")

    def set_size(self, width_px: float, dpr: float, state: ChartState) -> None:
        """The page shows the charts ``width_px`` CSS pixels wide at ``dpr``: draw them so."""
        width_px = round(float(width_px))
        if (width_px, float(dpr)) != (self.width_px, self.dpr) and width_px > 0:
            self.width_px, self.dpr = width_px, float(dpr)
            self.renderer.submit(snapshot(state), (self.width_px, self.dpr))

    def render(self, state: ChartState) -> None:
        """Update the captions and the table now; queue the figure."""
        self.syncer.set(self.objective, value=_caption("fit_prox objective", state.objective,
                                                       state.empty_text("fit_prox")))
        caption = _caption(f"{state.loss_title} batch loss", state.loss, state.empty_text(state.loss_stage))
        if state.pseudo_dice:  # nnU-Net's own validation figure, per epoch
            epoch, dice = state.pseudo_dice[-1]
            caption += f"<span style='font-size:12px'> · pseudo-Dice {dice:.3f} (epoch {epoch:.0f})</span>"
        self.syncer.set(self.loss, value=caption)
        scores = sorted(state.val_scores.items(), key=lambda kv: kv[1])
        self.syncer.set(self.scores, value=(
            f"<span style='font-size:12px'><b>validation</b>: {len(scores)} volume(s), worst "
            f"{scores[0][0]} {scores[0][1]:.3f}</span>" if scores else
            f"<span style='font-size:12px'><b>validation</b>: {state.empty_text('validate')}</span>"))
        self.syncer.set(self.grid, value=grid_table(state.grid, empty=state.empty_text("search")))
        self.renderer.submit(snapshot(state), (self.width_px, self.dpr))

    def close(self) -> None:
        self.renderer.close()
