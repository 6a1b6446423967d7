"""The results panel: status, submission, journal verification and GLOBAL_STATS."""

from __future__ import annotations

import ipywidgets as W

from nx47_pipeline.telemetry.events import Status
from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.results import ResultsState
from nx47_widgets.views.base import Syncer, fmt, h, section

__all__ = ["ResultsPanel"]


def _status_colour(status: Status | None) -> str:
    if status == Status.OK:
        return "#2e7d32"
    if status == Status.CANCELLED:
        return "#ef6c00"
    return "#c62828"


class ResultsPanel:
    """Submission path, GLOBAL_STATS and journal verification.

    Parameters
    ----------
    syncer : Syncer
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("<i>no result yet</i>")
        self.html.add_class("nx47-results")
        self.widget = W.VBox([section("Results"), self.html])

    def render(self, state: ResultsState) -> None:
        """Show the results of ``state``."""
        if state.status is None and not state.stats:
            body = "<i>no result yet</i>"
        else:
            colour = _status_colour(state.status)
            body = (f"<div>status: <b class='nx47-status' data-status='{h(state.status)}' "
                    f"style='color:{colour}'>{h(state.status or 'running')}</b>"
                    f" · duration {format_duration(state.duration_s)}</div>"
                    f"<div>submission: <code class='nx47-submission'>"
                    f"{h(state.submission or '-')}</code></div>")
            v = state.verification
            if v is not None:
                ok = getattr(v, "ok", False)
                txt = (f"journal verified: {getattr(v, 'n_lines', '?')} lines, head "
                       f"{str(getattr(v, 'head', ''))[:16]}") if ok else \
                    (f"journal verification FAILED at line {getattr(v, 'bad_line', '?')}: "
                     f"{getattr(v, 'reason', '')}")
                body += f"<div class='nx47-verify' style='color:{'#2e7d32' if ok else '#c62828'}'>{h(txt)}</div>"
            if state.stats:
                rows = "".join(
                    f"<tr><td style='padding-right:12px;color:#555'>{h(k)}</td>"
                    f"<td>{h(fmt(v))}</td></tr>" for k, v in state.stats.items())
                body += f"<details open><summary>GLOBAL_STATS</summary><table style='font-size:12px'>{rows}</table></details>"
        self.syncer.set(self.html, value=body)
