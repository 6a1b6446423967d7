"""The coverage panel: discovered / selected / coverage % and the budget verdict."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.coverage import CoverageModel
from nx47_widgets.views.base import Syncer, h

__all__ = ["CoveragePanel"]


class CoveragePanel:
    """Discovered / selected / coverage % and the budget verdict.

    Parameters
    ----------
    syncer : Syncer

    Attributes
    ----------
    last : dict
        The summary shown last (:meth:`CoverageModel.summary`).
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("")
        self.html.add_class("nx47-coverage")
        self.widget = self.html
        self.last: dict[str, Any] = {}

    def render(self, state: CoverageModel | None, note: str = "") -> None:
        """Show ``state`` (None: only ``note``, e.g. why discovery failed)."""
        if state is None:
            self.syncer.set(self.html, value=f"<div class='nx47-cov'>{h(note or 'no data discovered yet')}</div>")
            return
        s, problem = state.checked_summary()
        if problem:
            note = f"{note} · {problem}"
        self.last = s
        rows = [
            ("discovered pairs", f"<span class='nx47-discovered'>{s['discovered']}</span>"),
            ("selected", f"<span class='nx47-selected'>{s['selected']}</span> "
                         f"({s['n_train']} train + {s['n_val']} val)"),
            ("coverage", f"<span class='nx47-coverage-pct'>{s['coverage_pct']:.1f}%</span>"),
            ("test volumes", str(s["n_test"])),
        ]
        if s.get("budget_problem"):
            rows.append(("budget", f"<span class='nx47-cov-budget' style='color:#c62828'>refused: "
                                   f"{h(s['budget_problem'])}</span>"))
        else:
            rows.append(("budget", f"<span class='nx47-cov-budget'>{format_duration(s['budget_s'])}</span>"))
        if s.get("budget_problem"):
            rows.append(("projection", "<span class='nx47-projection'>none: the budget is "
                                       "refused</span>"))
        elif "projected_s" in s:
            ok = s["fits"]
            colour = "#2e7d32" if ok else "#c62828"
            verdict = "fits" if ok else "does not fit"
            rows.append(("projected", f"{format_duration(s['projected_s'])} — "
                         f"<b class='nx47-fits' style='color:{colour}'>{verdict}</b>"))
            if s["max_train_fit"] or s["max_val_fit"]:
                rows.append(("largest that fits",
                             f"{s['max_train_fit']} train + {s['max_val_fit']} val "
                             f"({format_duration(s['fit_projected_s'])})"))
            else:
                rows.append(("largest that fits", "none: the run relies on the fallback"))
        else:
            why = s.get("timings_note") or ("not measured yet: run a preflight (or a run) of "
                                            "this data to project the duration")
            rows.append(("projection", f"<span class='nx47-projection'>{h(why)}</span>"))
        body = "<table class='nx47-cov'>" + "".join(
            f"<tr><td style='padding-right:12px;color:#555'>{h(k)}</td><td>{v}</td></tr>"
            for k, v in rows) + "</table>"
        if getattr(state.config, "auto_coverage", False):
            body += ("<div style='color:#1565c0'>auto coverage is on: after its preflight "
                     "the run replaces these caps by the largest coverage that fits the "
                     "budget</div>")
        for w in s.get("selection_warnings", []):
            body += f"<div class='nx47-hint nx47-selection-warning'>{h(w)}</div>"
        if note:
            body += f"<div style='color:#555'>{h(note)}</div>"
        body += issues_html(getattr(state, "issues", []))
        self.syncer.set(self.html, value=body)


def issues_html(issues: list[str]) -> str:
    """Discovery issues as an expandable list ("" when there are none)."""
    if not issues:
        return ""
    n = len(issues)
    items = "".join(f"<li>{h(i)}</li>" for i in issues)
    return (f"<details class='nx47-issues'><summary>{n} discovery issue{'s' if n != 1 else ''} "
            f"found (show)</summary><ul style='margin:2px 0 2px 16px;padding:0'>{items}</ul>"
            "</details>")
