"""Human-readable text for durations and events: one formatter for every reader.

The console sink (:mod:`nx47_pipeline.telemetry.console`) prints
``[t] stage LABEL text`` lines and the dashboard's event log shows
``LABEL`` and ``text`` in columns; both come from :func:`event_label` and
:func:`event_text`, so a run reads the same in a Kaggle log and in the web app.
"""

from __future__ import annotations

import math
from typing import Any

from nx47_pipeline.telemetry.events import Event, EventKind

__all__ = ["format_duration", "event_label", "event_text", "clean"]

#: Short labels (the kind name, shortened where it is long).
_LABELS = {
    EventKind.PROGRESS_UPDATE: "PROGRESS",
    EventKind.ARRAY_TRACE: "TRACE",
    EventKind.COVERAGE_AUDIT: "COVERAGE",
}


def format_duration(seconds: float | None) -> str:
    """A duration as ``"4.2s"``, ``"42s"``, ``"3m05s"`` or ``"2h04m"``; ``"-"`` when unknown.

    Examples
    --------
    >>> format_duration(185)
    '3m05s'
    >>> format_duration(None)
    '-'
    """
    if seconds is None or not math.isfinite(float(seconds)):
        return "-"
    x = max(0.0, float(seconds))
    if x < 10:
        return f"{x:.1f}s"
    s = int(round(x))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def clean(text: Any) -> str:
    """``text`` on one line (carriage returns and newlines become spaces)."""
    return str(text).replace("\r", " ").replace("\n", " ")


def _num(x: float) -> str:
    return f"{x:g}" if float(x) != int(x) else str(int(x))


def _progress(p) -> str:
    parts = [f"{100.0 * float(p.global_ or 0.0):5.1f}%"]
    step = f"step {_num(p.step_done)}"
    if p.step_total:
        step += f"/{_num(p.step_total)}"
    if p.file:
        step += f" {p.file}"
    parts.append(step)
    if p.file_total and p.file_total != p.step_total:
        parts.append(f"file {p.file_done}/{p.file_total}")
    if p.substep or p.substep_total:
        sub = "sub"
        if p.substep_total:
            sub += f" {p.substep_done}/{p.substep_total}"
        if p.substep:
            sub += f" {p.substep}"
        parts.append(sub)
    if p.rate is not None:
        parts.append(f"{p.rate:.3g}/s")
    parts.append(f"eta {format_duration(p.eta_s)}")
    if p.message:
        parts.append(clean(p.message))
    return " | ".join(parts)


def _stats(stats: dict) -> str:
    """The headline of a GLOBAL_STATS payload (not its raw dict)."""
    counts = stats.get("counts") or {}
    val = (stats.get("validation") or {}).get("mean_score")
    parts = [f"status {stats.get('status', '?')}"]
    if val is not None:
        parts.append(f"validation score {float(val):.4f}")
    if counts:
        parts.append(f"{counts.get('train', 0)} train / {counts.get('val', 0)} val / "
                     f"{counts.get('test', 0)} test")
        if counts.get("fallback_volumes"):
            parts.append(f"{counts['fallback_volumes']} test volume(s) by the fallback")
        parts.append(f"{counts.get('warnings', 0)} warning(s), {counts.get('errors', 0)} error(s)")
    if stats.get("elapsed_s") is not None:
        parts.append(f"elapsed {format_duration(stats['elapsed_s'])}")
    return " | ".join(parts)


def event_label(event: Event) -> str:
    """The short label of an event's kind (``PROGRESS``, ``STEP``, ``WARNING``, ...)."""
    return _LABELS.get(event.kind, event.kind.value)


def event_text(event: Event) -> str:
    """One line describing ``event`` (without time, stage or label)."""
    p, k = event.payload, event.kind
    if k is EventKind.PROGRESS_UPDATE:
        return _progress(p)
    if k is EventKind.STEP:
        if p.phase == "begin":
            text = f"begin ({p.index + 1}/{p.count})"
        else:
            text = f"end {p.status} in {format_duration(p.duration_s)}"
        return text + (f" | {clean(p.message)}" if p.message else "")
    if k is EventKind.HEARTBEAT:
        text = (f"{p.state} | {clean(p.message)} | cpu {p.cpu_pct:.0f}% | rss {p.rss_mb:.0f} MB"
                f" | elapsed {format_duration(p.elapsed_s)}")
        if p.budget_left_s is not None:
            text += f" | budget left {format_duration(p.budget_left_s)}"
        return text
    if k is EventKind.ARRAY_TRACE:
        return (f"{p.name} {tuple(p.shape)} {p.dtype} min {p.min!s:.8} max {p.max!s:.8} "
                f"mean {p.mean!s:.8} #{p.digest[:12]}")
    if k is EventKind.METRIC:
        step = "" if p.step is None else f" @ {p.step}"
        return f"{p.name} = {p.value:.6g}{step}"
    if k is EventKind.PREVIEW:
        score = "" if p.score is None else f" score {p.score:.4f}"
        return f"{p.split} {p.volume_id}{score}"
    if k in (EventKind.WARNING, EventKind.ERROR, EventKind.CANCELLED):
        code = f"({p.code}) " if p.code else ""
        subj = f"[{p.subject}] " if p.subject else ""
        return f"{code}{subj}{clean(p.message)}"
    if k is EventKind.BUDGET:
        return f"{p.decision} | {clean(p.message)}"
    if k in (EventKind.PREFLIGHT_OK, EventKind.PREFLIGHT_FAIL):
        return f"in {format_duration(p.duration_s)}" + (f" | {clean(p.reason)}" if p.reason else "")
    if k is EventKind.COVERAGE_AUDIT:
        return (f"{p.pair_count_selected_for_training}/{p.pair_count_discovered} pairs "
                f"({p.coverage_pct_selected_vs_discovered:.1f}%) | train {p.n_train} "
                f"val {p.n_val} test {p.n_test}")
    if k is EventKind.GLOBAL_STATS:
        return _stats(p.stats or {})
    if k is EventKind.EXEC_COMPLETE:
        return (f"{p.status} in {format_duration(p.duration_s)} | submission {p.submission}"
                f" | journal head {str(p.journal_head)[:16]}")
    if k is EventKind.RUN_START:
        return f"{p.run_id} pid {p.pid} -> {p.out_dir}" + (" (resumed)" if p.resumed else "")
    if k is EventKind.CONFIG:
        return f"{len(p.config or {})} settings"
    return ""  # pragma: no cover - every kind is handled above
