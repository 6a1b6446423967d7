"""The runs page: every run under an output root, one row and one address each.

The table fits its column (folder names and QA notes wrap; dates, statuses
and numbers do not), each folder is a link to its own address under Voila,
a running run shows the time since it started, and a click on a column's
title sorts the rows by it (in the page, :meth:`RunsPanel.sort_script`;
click again for the other order; kept when the table refreshes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import ipywidgets as W

from nx47_pipeline.io.run_folder import QA
from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.runs import INFER, RunSummary
from nx47_widgets.views.base import Syncer, h
from nx47_widgets.views.colours import outcome_colour

__all__ = ["RunsPanel", "runs_table", "SORT_SCRIPT", "COLUMNS"]


def _when(ts: float | None, now: float | None = None) -> str:
    """``14:05`` today, ``12-06 14:05`` this year, else ``2025-12-06``."""
    if ts is None:
        return "-"
    t, n = time.localtime(ts), time.localtime(time.time() if now is None else now)
    if t[:3] == n[:3]:
        return time.strftime("%H:%M", t)
    return time.strftime("%m-%d %H:%M" if t.tm_year == n.tm_year else "%Y-%m-%d", t)


def _v(x: object) -> str:
    """A cell's sort value (``data-v``)."""
    return "" if x is None else h(str(x))


def _kind(r: RunSummary) -> str:
    """``run``, or ``infer`` with its input's name and shape (the input's path on hover)."""
    if r.kind != INFER:
        return f"<span class='nx47-run-kind'>{h(r.kind)}</span>"
    shape = r.infer.get("shape")
    what = Path(str(r.infer.get("input") or "")).name
    if isinstance(shape, list):
        what += " " + "×".join(str(n) for n in shape)
    return (f"<span class='nx47-run-kind' data-kind='infer' title='{h(r.infer.get('input', ''))}'>"
            f"<b>infer</b></span><div class='nx47-hint'>{h(what.strip())}</div>")


#: The columns: (key, title, tooltip).
COLUMNS = (("folder", "run folder", "the run's folder (its address under Voila)"),
           ("kind", "kind", "run, or nx47 infer"),
           ("status", "status", "how the run ended, or that it runs"),
           ("started", "started", "when it started"),
           ("duration", "took", "how long it took; for a running run, the time since it started"),
           ("score", "score", "mean validation score"),
           ("coverage", "coverage", "training + validation volumes, % of the pairs found"),
           ("fallback", "fallback", "test volumes segmented by the fallback"),
           ("qa", "QA", f"QA marks in {QA}"))


def runs_table(runs: list[RunSummary], *, links: bool, current: str | None = None,
               now: float | None = None, root: str | None = None) -> str:
    """The runs as an HTML table (``links``: each row links to ``?out=<folder>``;
    ``root``: folders under it are named relative to it; ``now``: the wall
    time a running run's duration counts to)."""
    if not runs:
        return "<div class='nx47-hint'>no run found under this folder</div>"
    now = time.time() if now is None else now
    head = "<tr>" + "".join(f"<th data-col='{k}' title='{h(tip)} (click to sort)'>{h(t)}</th>"
                            for k, t, tip in COLUMNS) + "</tr>"
    base = Path(root).expanduser() if root else None
    rows = []
    for r in runs:
        folder = str(r.folder)
        shown_name = folder
        if base is not None:
            try:
                shown_name = str(Path(folder).relative_to(base)) or Path(folder).name
            except ValueError:
                pass
        name = h(shown_name)
        if links:
            name = (f"<a class='nx47-run-link' href='?out={quote(folder)}' title='{h(folder)}'>"
                    f"{h(shown_name)}</a>")
        mark = " <span class='nx47-hint'>&#9664; shown</span>" if current and folder == current else ""
        v = r.verdict
        cov = "-" if r.coverage_pct is None else (
            f"{r.coverage_pct:.0f}% <span class='nx47-nowrap'>({r.n_train}+{r.n_val})</span>")
        fb = "-" if r.fallback is None else f"{r.fallback} of {r.n_test}"
        qa = ", ".join(f"{n} {k}" for k, n in r.qa.items() if n) or "-"
        duration = r.duration_s
        if r.running and r.started_ts is not None:
            duration = max(0.0, now - r.started_ts)  # still running: the time since it started
        took = format_duration(duration)
        took_tip = "running for" if r.running else "took"
        rows.append(
            f"<tr data-outcome='{v.outcome.value}' data-kind='{h(r.kind)}'>"
            f"<td class='nx47-folder' data-v='{h(shown_name)}'>{name}{mark}</td>"
            f"<td data-v='{h(r.kind)}'>{_kind(r)}</td>"
            f"<td class='nx47-nowrap' data-v='{h(v.label)}'>"
            f"<b style='color:{outcome_colour(v.outcome)}' title='{h(v.words)}'>{h(v.label)}</b></td>"
            f"<td class='nx47-nowrap' data-v='{_v(r.started_ts)}' title='{h(_full_time(r.started_ts))}'>"
            f"{_when(r.started_ts, now)}</td>"
            f"<td class='nx47-nowrap nx47-took' data-v='{_v(duration)}' title='{took_tip} {took}'>{took}</td>"
            f"<td class='nx47-nowrap' data-v='{_v(r.score)}'>{'-' if r.score is None else f'{r.score:.4f}'}</td>"
            f"<td data-v='{_v(r.coverage_pct)}'>{cov}</td>"
            f"<td class='nx47-nowrap' data-v='{_v(r.fallback)}'>{fb}</td>"
            f"<td data-v='{h(qa)}'>{h(qa)}</td></tr>")
    return f"<table class='nx47-runs-table'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _full_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


#: Sorts the runs table by the column clicked (numbers as numbers, empty last).
SORT_SCRIPT = """(function(){if(window.__nx47Sort)return;window.__nx47Sort={col:null,dir:1};
const S=window.__nx47Sort;
function key(td){const v=td?td.getAttribute('data-v'):null;if(v===null||v==='')return null;
  const n=Number(v);return isNaN(n)?v:n;}
function apply(){if(S.col===null)return;const t=document.querySelector('.nx47-runs table');if(!t)return;
  const ths=[...t.querySelectorAll('th')];const i=ths.findIndex(th=>th.getAttribute('data-col')===S.col);
  if(i<0)return;ths.forEach(th=>th.removeAttribute('data-sorted'));
  ths[i].setAttribute('data-sorted',S.dir>0?'asc':'desc');const tb=t.tBodies[0];
  const rows=[...tb.rows];rows.sort((a,b)=>{const x=key(a.cells[i]),y=key(b.cells[i]);
    if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
    return (typeof x==='number'&&typeof y==='number'?x-y:String(x).localeCompare(String(y)))*S.dir;});
  rows.forEach(r=>tb.appendChild(r));}
document.addEventListener('click',function(e){const th=e.target.closest&&e.target.closest('.nx47-runs th[data-col]');
  if(!th)return;const c=th.getAttribute('data-col');S.dir=(S.col===c)?-S.dir:1;S.col=c;apply();});
new MutationObserver(function(){const t=document.querySelector('.nx47-runs table');
  if(t&&S.col!==null&&!t.querySelector('th[data-sorted]'))apply();})
  .observe(document.body,{childList:true,subtree:true});})();"""


class RunsPanel:
    """The runs under a folder, with a way to open each.

    Parameters
    ----------
    syncer : Syncer
    root : str
        The folder searched first.
    scan : callable
        ``scan(root) -> list[RunSummary]``.
    on_open : callable
        ``on_open(folder)`` opens a run in the page.
    links : bool
        Rows link to their own address (``?out=``): under Voila.
    """

    def __init__(self, syncer: Syncer, root: str, scan: Callable[[str], list[RunSummary]],
                 on_open: Callable[[str], Any], links: bool) -> None:
        self.syncer = syncer
        self._scan, self._on_open, self.links = scan, on_open, links
        self.root = W.Text(value=root, description="Runs under", continuous_update=False,
                           layout=W.Layout(width="70%"))
        self.root.add_class("nx47-runs-root")
        self.refresh_button = W.Button(description="Refresh", layout=W.Layout(width="auto"))
        self.choice = W.Dropdown(options=[], description="Open run", layout=W.Layout(width="70%"),
                                 style={"description_width": "initial"})
        self.choice.add_class("nx47-run-choice")
        self.open_button = W.Button(description="Open", layout=W.Layout(width="auto"))
        self.open_button.add_class("nx47-open-run")
        self.table = W.HTML("")
        self.table.add_class("nx47-runs")
        self.runs: list[RunSummary] = []
        self.current: str | None = None
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.root.observe(lambda _c: self.refresh(), names="value")
        self.open_button.on_click(lambda _b: self._open())
        self.widget = W.VBox([W.HBox([self.root, self.refresh_button]), self.table,
                              W.HBox([self.choice, self.open_button])])
        self.widget.add_class("nx47-runs-page")

    def refresh(self) -> list[RunSummary]:
        """Scan the folder again and show its runs."""
        self.render(self._scan(self.root.value))
        return self.runs

    def render(self, state: list[RunSummary]) -> None:
        """Show the runs ``state`` (kept as :attr:`runs`), the one shown marked."""
        self.runs = state
        self.syncer.set(self.table, value=runs_table(self.runs, links=self.links,
                                                     current=self.current, root=self.root.value))
        options = [(f"{r.folder}{' · infer' if r.kind == INFER else ''} · {r.verdict.label}", str(r.folder))
                   for r in self.runs]
        self.syncer.set_options(self.choice, options)
        # never blank: the run shown, else the first (newest) one
        values = [v for _, v in options]
        if values and self.choice.value not in values:
            self.syncer.set(self.choice, value=self.current if self.current in values else values[0])
        self.syncer.set(self.open_button, disabled=not values)

    def _open(self) -> None:
        if self.choice.value:
            self._on_open(self.choice.value)
