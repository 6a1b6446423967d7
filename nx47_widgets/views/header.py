"""The run header: one strip at the top of the page (state, elapsed, ETA,
validation score, fallback count), the progress bars full-width under it."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.dashboard import DashboardState
from nx47_widgets.state.header import HeaderInfo, describe, header_info
from nx47_widgets.views.base import Syncer, h
from nx47_widgets.views.colours import light_colour, outcome_colour

__all__ = ["HeaderPanel", "header_html"]


def header_html(info: HeaderInfo) -> str:
    """The strip's HTML (``data-*`` attributes carry the numbers)."""
    fields = describe(info)
    num = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    attrs = (f"data-state='{h(info.state)}' data-outcome='{h(info.outcome)}' "
             f"data-light='{h(info.light)}' data-elapsed='{num(info.elapsed_s)}' "
             f"data-eta='{num(info.eta_s)}' data-score='{num(info.score)}' "
             f"data-fallback='{'' if info.fallback is None else info.fallback}'")
    # running: the heartbeat light's colour; ended (or no run): the outcome's
    colour = (light_colour(info.light) if info.state == "running" or not info.outcome
              else outcome_colour(info.outcome))
    # while it runs, the heartbeat's light too (ACTIVE, COMPUTING, STALLED)
    light = (f" <span class='nx47-hd-light'>· {h(info.light)}</span>"
             if info.state == "running" and info.light != "WAITING" else "")
    cells = "".join(f"<span class='nx47-hd-field nx47-hd-{h(k.lower())}'><span class='nx47-hd-k'>"
                    f"{h(k)}</span> <b>{h(v)}</b></span>" for k, v in fields.items())
    folder = (f"<span class='nx47-hd-folder' title='{h(info.folder)}'>{h(info.folder)}</span>"
              if info.folder else "")
    return (f"<div class='nx47-hd' {attrs}>"
            f"<span class='nx47-hd-state' style='color:{colour}'>"
            f"<span class='nx47-hd-dot' style='background:{colour}'></span>"
            f"{h(info.state)}{light}</span>{cells}{folder}</div>")


class HeaderPanel:
    """The strip and, under it, the progress panel's bars.

    Parameters
    ----------
    syncer : Syncer
    progress : ipywidgets.Widget
        The progress bars (shown full-width under the strip).
    """

    def __init__(self, syncer: Syncer, progress: W.Widget) -> None:
        self.syncer = syncer
        self.strip = W.HTML("")
        self.strip.add_class("nx47-header-strip")
        self.widget = W.VBox([self.strip, progress], layout=W.Layout(width="100%"))
        self.widget.add_class("nx47-header")

    def render(self, state: DashboardState, now: float | None = None) -> None:
        """Show the header of the run ``state`` at wall time ``now`` (default:
        its heartbeat's clock)."""
        self.syncer.set(self.strip, value=header_html(header_info(state, now)))
