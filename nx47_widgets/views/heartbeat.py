"""The heartbeat panel: a coloured light and the worker's vital signs."""

from __future__ import annotations

import ipywidgets as W

from nx47_widgets.state.heartbeat import WAITING, HeartbeatState
from nx47_widgets.views.base import Syncer, h, section

__all__ = ["HeartbeatPanel"]


def _ago(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}s ago"


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

    def render(self, state: HeartbeatState, now: float | None = None) -> None:
        """Show the light of ``state`` at wall time ``now`` (default: its clock)."""
        v = state.view(now)
        self.state = v.state
        cpu = "-" if v.cpu_pct is None else f"{v.cpu_pct:.0f}%"
        rss = "-" if v.rss_mb is None else f"{v.rss_mb:.0f} MB"
        body = (
            f"<div class='nx47-hb' data-state='{v.state}' style='display:flex;"
            f"align-items:center;gap:10px'>"
            f"<span class='nx47-light' style='display:inline-block;width:18px;height:18px;"
            f"border-radius:9px;background:{v.colour};box-shadow:0 0 6px {v.colour}'></span>"
            f"<b class='nx47-hb-state' style='color:{v.colour}'>{v.state}</b>"
            f"<span>{h(v.words)}</span>"
            f"<span>· last beat {_ago(v.since_beat_s)} · last progress "
            f"{_ago(v.since_progress_s)} · CPU {cpu} · memory {rss}</span></div>"
        )
        if v.message:
            body += f"<div style='color:#555'>{h(v.message)}</div>"
        self.syncer.set(self.html, value=body)
