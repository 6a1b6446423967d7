"""The runs under an output root: one summary per run folder.

A run folder is any folder holding a ``journal.jsonl``: the root itself and
its sub-folders (two levels down).  Each summary says how the run ended (or
that it runs: its ``run.lock`` names a live process), from the journal's last
lines, ``stats.json``, ``killed.json`` and ``qa.json`` — never by replaying
the whole journal, so the page lists hundreds of runs at once.  A folder of
``nx47 infer`` (it holds ``infer_key.json``) is a run of kind ``"infer"``,
with its input, shape and chunk from that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nx47_pipeline.io.run_folder import INFER_KEY, RunFolder
from nx47_pipeline.telemetry.events import EventKind, Status

from nx47_widgets.lifecycle import describe, holder, read_killed
from nx47_widgets.state.outcome import Outcome, Verdict, classify
from nx47_widgets.state.qa import QaMarks
from nx47_widgets.loaders import journal_tail, read_infer_key, read_stats

__all__ = ["RunSummary", "summarize_run", "scan_runs", "pick_run", "RUN", "INFER"]

#: Bytes read from the end of a journal to find its last run's start and end.
TAIL_BYTES = 256 * 1024
#: Kinds of run folder: ``nx47 run`` (or the page's Run), ``nx47 infer``.
RUN, INFER = "run", "infer"


@dataclass
class RunSummary:
    """One run folder as the runs page shows it."""

    folder: Path
    verdict: Verdict
    started_ts: float | None = None
    duration_s: float | None = None
    score: float | None = None
    coverage_pct: float | None = None
    n_train: int | None = None
    n_val: int | None = None
    fallback: int | None = None
    n_test: int | None = None
    mtime: float = 0.0
    qa: dict[str, int] = field(default_factory=dict)
    holder: str = ""
    kind: str = RUN
    infer: dict[str, Any] = field(default_factory=dict)  # infer_key.json: shape, chunk, input

    @property
    def running(self) -> bool:
        return self.verdict.outcome is Outcome.RUNNING


def _tail_events(journal: Path) -> list[dict[str, Any]]:
    """The complete lines in the last :data:`TAIL_BYTES` of ``journal``, parsed."""
    return journal_tail(journal, TAIL_BYTES)


def summarize_run(folder: str | os.PathLike) -> RunSummary | None:
    """The summary of the run in ``folder`` (None: no journal there).

    Parameters
    ----------
    folder : str or path-like

    Returns
    -------
    RunSummary or None
    """
    folder = Path(folder)
    journal = RunFolder(folder).journal
    try:
        events = _tail_events(journal)
        mtime = journal.stat().st_mtime
    except OSError:
        return None
    start = end = None
    for e in events:
        if e.get("kind") == EventKind.RUN_START.value:
            start, end = e, None
        elif e.get("kind") == EventKind.EXEC_COMPLETE.value:
            end = e
    live = holder(folder)
    stats = read_stats(folder)
    started = float(start["ts"]) if start else None
    status = None
    if end is not None:
        status = Status(end["payload"].get("status", "failed"))
    elif live is None:
        stats = {}  # stats.json of an earlier run in the folder
    key = read_infer_key(folder)
    killed = lost = None
    if status is None and live is None:
        rec = read_killed(folder)
        if rec and (started is None or float(rec.get("ts", 0)) >= started):
            killed = str(rec.get("reason") or "killed")
        else:
            lost = "the run's process ended without a final event"
    verdict = classify(status, stats, killed=killed, lost=lost)
    counts = stats.get("counts") or {}
    cov = stats.get("coverage") or {}
    duration = None
    if end is not None:
        duration = end["payload"].get("duration_s")
    elif started is not None and events:
        duration = float(events[-1].get("ts", started)) - started
    return RunSummary(
        folder=folder, verdict=verdict, started_ts=started, duration_s=duration,
        score=(stats.get("validation") or {}).get("mean_score"),
        coverage_pct=cov.get("coverage_pct_selected_vs_discovered"),
        n_train=counts.get("train"), n_val=counts.get("val"),
        fallback=counts.get("fallback_volumes"), n_test=counts.get("test"), mtime=mtime,
        qa=QaMarks.load(folder).counts() if RunFolder(folder).qa.exists() else {},
        holder=describe(live) if live is not None else "",
        kind=INFER if (folder / INFER_KEY).exists() else RUN,
        infer=key if isinstance(key, dict) else {})


def scan_runs(root: str | os.PathLike, depth: int = 2) -> list[RunSummary]:
    """The runs under ``root`` (the root itself included), newest first.

    Parameters
    ----------
    root : str or path-like
    depth : int
        Folder levels searched below the root.

    Returns
    -------
    list of RunSummary
    """
    root = Path(root).expanduser()
    found: list[RunSummary] = []
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            s = summarize_run(folder)
            if s is not None:
                found.append(s)
                continue  # a run folder's sub-folders are its artifacts
            try:
                nxt.extend(sorted(p for p in folder.iterdir()
                                  if p.is_dir() and not p.name.startswith((".", "stale-"))))
            except OSError:
                continue
        level = nxt
    found.sort(key=lambda s: s.mtime, reverse=True)
    return found


def pick_run(runs: list[RunSummary]) -> RunSummary | None:
    """The run a page opens by itself: the running one, else the newest."""
    for s in runs:
        if s.running:
            return s
    return runs[0] if runs else None
