"""The Dask panel: the run's scheduler, workers and tasks (``cluster.json``).

Shown only when the run folder holds a ``cluster.json`` of the run shown
(a run on a Dask scheduler); hidden for in-process runs.
"""

from __future__ import annotations

import time

import ipywidgets as W

from nx47_widgets.state.cluster import CLOSED, ENDED, MALFORMED, STALE, UP, ClusterState, WorkerInfo
from nx47_widgets.views.base import Syncer, h, human_bytes, section

__all__ = ["ClusterPanel", "cluster_html", "worker_rows"]

#: Workers listed at most (the summary counts them all).
MAX_ROWS = 64

_COLOURS = {UP: "#2e7d32", STALE: "#c62828", CLOSED: "#546e7a", ENDED: "#8d6e63",
            MALFORMED: "#c62828"}


def _n(v: int | None) -> str:
    return "?" if v is None else str(v)


def _clock(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _memory(w: WorkerInfo) -> str:
    """``412.0 MB / 1.0 GB`` with a small bar (red above 90 %, amber above 70 %)."""
    used = "?" if w.memory_bytes is None else human_bytes(w.memory_bytes)
    text = f"{used} / {human_bytes(w.memory_limit)}" if w.memory_limit else f"{used} (no limit)"
    frac = w.memory_frac
    if frac is None:
        return h(text)
    colour = "#c62828" if frac > 0.9 else "#f9a825" if frac > 0.7 else "#2e7d32"
    bar = (f"<span class='nx47-mem-bar' style='display:inline-block;width:80px;height:8px;"
           f"background:#e0e0e0;margin-right:6px;vertical-align:middle'><span style='display:block;"
           f"height:8px;width:{min(frac, 1.0) * 100:.0f}%;background:{colour}'></span></span>")
    return f"{bar}<span data-frac='{frac:.3f}'>{h(text)}</span>"


def worker_rows(workers: tuple[WorkerInfo, ...]) -> str:
    """The workers as table rows (at most :data:`MAX_ROWS`)."""
    rows = [f"<tr class='nx47-worker'><td title='{h(w.address)}'>{h(w.name)}</td>"
            f"<td>{_memory(w)}</td><td>{_n(w.tasks_processing)}</td><td>{_n(w.nthreads)}</td></tr>"
            for w in workers[:MAX_ROWS]]
    if len(workers) > MAX_ROWS:
        rows.append(f"<tr><td colspan=4><i>… {len(workers) - MAX_ROWS} more workers</i></td></tr>")
    return "".join(rows)


def _condition(state: ClusterState) -> str:
    snap, age = state.snapshot, state.age_s
    ago = "" if age is None else f"{age:.0f} s ago"
    c = state.condition
    if c == UP:
        words = f"up · updated {ago}" if ago else "up"
    elif c == STALE:
        words = (f"stale: no update for {age:.0f} s while the run is running "
                 "(the scheduler or the run may be stuck)")
    elif c == CLOSED:
        words = f"closed (last update {_clock(snap.updated)})"
    else:
        words = f"not reported closed; the run is not running (last update {_clock(snap.updated)})"
    return f"<b class='nx47-cluster-cond' style='color:{_COLOURS[c]}'>{h(words)}</b>"


def _link(url: str | None) -> str:
    if not url:
        return "<span class='nx47-hint'>no Dask dashboard link reported</span>"
    if not url.startswith(("http://", "https://")):
        return f"<span class='nx47-hint'>Dask dashboard: {h(url)}</span>"
    return (f"<a class='nx47-dask-link' href='{h(url)}' target='_blank' rel='noopener'>"
            f"Dask dashboard &#8599;</a> <span class='nx47-hint'>{h(url)} (served by the "
            "scheduler's machine)</span>")


def cluster_html(state: ClusterState) -> str:
    """What the panel shows for ``state`` ("" when hidden)."""
    c = state.condition
    if c is None:
        return ""
    if c == MALFORMED:
        return (f"<div class='nx47-cluster' data-condition='{c}' style='color:{_COLOURS[c]}'>"
                f"{h(state.problem)}</div>")
    snap = state.snapshot
    workers = snap.workers
    n_workers = "?" if workers is None else str(len(workers))
    head = (f"<div>scheduler <code class='nx47-scheduler'>{h(snap.scheduler or '?')}</code> · "
            f"<b class='nx47-n-workers'>{n_workers}</b> workers · tasks "
            f"<b class='nx47-in-flight'>{_n(snap.tasks_in_flight)}</b> in flight, "
            f"<b class='nx47-done'>{_n(snap.tasks_done)}</b> done</div>")
    table = ""
    if workers:
        table = ("<table class='nx47-workers' style='border-collapse:collapse;font-size:12px'>"
                 "<tr><th>worker</th><th>memory used / limit</th><th>tasks</th><th>threads</th></tr>"
                 f"{worker_rows(workers)}</table>")
    elif workers is not None:
        table = "<div class='nx47-hint'>no worker connected</div>"
    return (f"<div class='nx47-cluster' data-condition='{c}'>{head}<div>{_condition(state)}</div>"
            f"{table}<div>{_link(snap.dashboard_link)}</div></div>")


class ClusterPanel:
    """The Dask panel (hidden while the run has no ``cluster.json``).

    Parameters
    ----------
    syncer : Syncer
    """

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("")
        self.html.add_class("nx47-cluster-view")
        self.widget = W.VBox([section("Dask cluster"), self.html], layout=W.Layout(display="none"))
        self.widget.add_class("nx47-cluster-panel")

    @property
    def shown(self) -> bool:
        """True while the panel is visible."""
        return self.widget.layout.display != "none"

    def render(self, state: ClusterState) -> None:
        """Show ``state`` (hide the panel when the run folder has no cluster file)."""
        self.syncer.set(self.html, value=cluster_html(state))
        self.syncer.set(self.widget.layout, display="" if state.visible else "none")
