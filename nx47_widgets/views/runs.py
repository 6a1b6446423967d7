"""The runs page: every run under an output root, one row and one address each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import ipywidgets as W

from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.runs import INFER, RunSummary
from nx47_widgets.views.base import Syncer, h

__all__ = ["RunsPanel", "runs_table"]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


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


def runs_table(runs: list[RunSummary], *, links: bool, current: str | None = None) -> str:
    """The runs as an HTML table (``links``: each row links to ``?out=<folder>``)."""
    if not runs:
        return "<div class='nx47-hint'>no run found under this folder</div>"
    head = ("<tr><th>run folder</th><th>kind</th><th>status</th><th>started</th><th>duration</th>"
            "<th>validation</th><th>coverage</th><th>fallback</th><th>QA</th></tr>")
    rows = []
    for r in runs:
        folder = str(r.folder)
        name = h(folder)
        if links:
            name = f"<a class='nx47-run-link' href='?out={quote(folder)}'>{h(folder)}</a>"
        mark = " &#9664; shown" if current and folder == current else ""
        v = r.verdict
        cov = "-" if r.coverage_pct is None else (
            f"{r.coverage_pct:.0f}% ({r.n_train}+{r.n_val})")
        fb = "-" if r.fallback is None else f"{r.fallback} of {r.n_test}"
        qa = ", ".join(f"{n} {k}" for k, n in r.qa.items() if n) or "-"
        rows.append(
            f"<tr data-outcome='{v.outcome.value}' data-kind='{h(r.kind)}'><td>{name}{mark}</td>"
            f"<td>{_kind(r)}</td>"
            f"<td><b style='color:{v.colour}' title='{h(v.words)}'>{h(v.label)}</b></td>"
            f"<td>{_when(r.started_ts)}</td><td>{format_duration(r.duration_s)}</td>"
            f"<td>{'-' if r.score is None else f'{r.score:.4f}'}</td><td>{cov}</td>"
            f"<td>{fb}</td><td>{h(qa)}</td></tr>")
    return f"<table class='nx47-runs-table'>{head}{''.join(rows)}</table>"


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
        self.choice = W.Dropdown(options=[], description="Run", layout=W.Layout(width="70%"))
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
        self.runs = self._scan(self.root.value)
        self.render()
        return self.runs

    def render(self) -> None:
        """Show :attr:`runs`."""
        self.syncer.set(self.table, value=runs_table(self.runs, links=self.links,
                                                     current=self.current))
        self.syncer.set_options(self.choice, [(f"{r.folder}{' · infer' if r.kind == INFER else ''} · "
                                               f"{r.verdict.label}", str(r.folder))
                                              for r in self.runs])

    def _open(self) -> None:
        if self.choice.value:
            self._on_open(self.choice.value)
