"""The heartbeat panel: a coloured light and the worker's vital signs."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.dashboard import DashboardState
from nx47_widgets.state.heartbeat import WAITING
from nx47_widgets.state.outcome import Outcome
from nx47_widgets.views.base import Syncer, h, section
from nx47_widgets.views.colours import light_colour, outcome_colour

__all__ = ["HeartbeatPanel"]


def _ago(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}s ago"


def _before(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}s"


class HeartbeatPanel:
    """Coloured light, state in words, seconds since beat / progress, CPU, memory.

    Parameters
    ----------
    syncer : Syncer
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("")
        self.html.add_class("nx47-heartbeat")
        self.widget = W.VBox([section("Heartbeat"), self.html])
        self.state = WAITING

    def render(self, state: DashboardState, now: float | None = None) -> None:
        """Show the light of the run ``state`` at wall time ``now`` (default:
        its heartbeat's clock).

        Once the run ended, its verdict (how it ended: fallback, budget cut,
        killed, lost ...) gives the light its colour and words; the ages then
        count to the end of the run, not to now.
        """
        verdict = state.results.verdict
        hb = state.heartbeat
        v = hb.view(now)
        self.state = v.state
        colour, words, outcome = light_colour(v.state), v.words, ""
        if hb.final is not None and verdict.outcome is not Outcome.RUNNING:
            colour, words, outcome = outcome_colour(verdict.outcome), verdict.words, verdict.outcome.value
        cpu = "-" if v.cpu_pct is None else f"{v.cpu_pct:.0f}%"
        rss = "-" if v.rss_mb is None else f"{v.rss_mb:.0f} MB"
        ages = (f"last beat {_ago(v.since_beat_s)} · last progress {_ago(v.since_progress_s)}"
                if hb.final is None else
                f"ended · last beat {_before(v.since_beat_s)} before the end")
        body = (
            f"<div class='nx47-hb' data-state='{v.state}' data-outcome='{outcome}' "
            f"style='display:flex;align-items:center;gap:10px;flex-wrap:wrap'>"
            f"<span class='nx47-light' style='display:inline-block;width:18px;height:18px;"
            f"border-radius:9px;background:{colour};box-shadow:0 0 6px {colour}'></span>"
            f"<b class='nx47-hb-state' style='color:{colour}'>{v.state}</b>"
            f"<span class='nx47-hb-words'>{h(words)}</span>"
            f"<span>· {ages} · CPU {cpu} · memory {rss}</span></div>"
        )
        if v.message and v.message != words:
            body += f"<div style='color:#555'>{h(v.message)}</div>"
        self.syncer.set(self.html, value=body)
