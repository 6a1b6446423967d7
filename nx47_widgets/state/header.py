"""The run header: how the run shown stands, in one line of numbers.

Like the header of a W&B run page: its state (running, and the heartbeat's
light while it runs; how it ended once it ended), the time it has taken, the
time left by the projection, the validation score and how many test volumes
got the fallback segmentation.  Read from the dashboard's reducers; nothing
is stored here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nx47_pipeline.telemetry.format import format_duration

from nx47_widgets.state.heartbeat import WAITING
from nx47_widgets.state.outcome import Outcome

__all__ = ["HeaderInfo", "header_info", "describe"]


@dataclass(frozen=True)
class HeaderInfo:
    """The header's fields, as numbers and as words.

    Attributes
    ----------
    state : str
        ``"no run"``, ``"running"`` or the outcome's label.
    outcome : str
        The :class:`~nx47_widgets.state.outcome.Outcome` value (``""``: no run).
    light : str
        The heartbeat light (ACTIVE, COMPUTING, STALLED ...; WAITING: no run).
    elapsed_s, eta_s, score : float or None
    eta_text : str
        The ETA in words (``"2m10s (projection)"``, ``"after the preflight"``, ``"-"``).
    n_val : int or None
        Validation volumes the score is the mean of.
    fallback, n_test : int or None
        Test volumes segmented by the fallback, of ``n_test``.
    folder : str
        The run folder shown.
    """

    state: str
    outcome: str
    light: str
    elapsed_s: float | None
    eta_s: float | None
    eta_text: str
    score: float | None
    n_val: int | None
    fallback: int | None
    n_test: int | None
    folder: str


def _int(x: Any) -> int | None:
    try:
        return None if x is None else int(x)
    except (TypeError, ValueError):
        return None


def header_info(state: Any, now: float | None = None, folder: str | Path | None = None) -> HeaderInfo:
    """The header of the run a :class:`~nx47_widgets.state.dashboard.DashboardState` shows.

    Parameters
    ----------
    state : DashboardState
    now : float, optional
        Wall time (default: the heartbeat's clock).
    folder : str or Path, optional
        The run folder (default: the state's ``folder``, else the one its
        RUN_START named).

    Returns
    -------
    HeaderInfo
    """
    hb, res, prog = state.heartbeat, state.results, state.progress
    folder = getattr(state, "folder", None) if folder is None else folder
    light = hb.view(now)
    now = hb.clock() if now is None else now
    verdict = res.verdict
    started = hb.started_ts
    stats = res.stats or {}
    validation = stats.get("validation") or {}
    counts = stats.get("counts") or {}
    score = validation.get("mean_score")
    score = float(score) if isinstance(score, (int, float)) else None
    if started is None and not res.ended:
        return HeaderInfo("no run", "", WAITING, None, None, "-", None, None, None, None,
                          str(folder or ""))
    ended = res.ended or state.ended
    if ended:
        if res.duration_s is not None:
            elapsed = float(res.duration_s)
        elif started is not None:
            elapsed = max(0.0, float(hb.ended_ts or hb.last_beat_ts or now) - started)
        else:
            elapsed = None
        eta, eta_text = 0.0, "ended"
    else:
        elapsed = None if started is None else max(0.0, now - started)
        eta = prog.timeline.eta_s()
        eta_text = prog.eta_text()
        eta_text = eta_text[4:] if eta_text.startswith("ETA ") else eta_text
        if eta is None and eta_text.startswith("after"):
            eta_text = "after the preflight"
    running = verdict.outcome is Outcome.RUNNING and not ended
    return HeaderInfo(
        state="running" if running else verdict.label,
        outcome=verdict.outcome.value,
        light=light.state,
        elapsed_s=elapsed, eta_s=eta, eta_text=eta_text, score=score,
        n_val=(len(validation["per_volume"]) if isinstance(validation.get("per_volume"), dict)
               else _int(counts.get("val"))),
        fallback=_int(counts.get("fallback_volumes")) if "fallback_volumes" in counts else None,
        n_test=_int(counts.get("test")),
        folder=str(folder or res.out_dir or ""),
    )


def describe(info: HeaderInfo) -> dict[str, str]:
    """The header's fields as short texts (label -> value)."""
    score = "-" if info.score is None else f"{info.score:.4f}"
    if info.score is not None and info.n_val:
        score += f" (mean of {info.n_val})"
    fb = "-" if info.fallback is None else (
        f"{info.fallback} of {info.n_test}" if info.n_test is not None else str(info.fallback))
    return {"elapsed": format_duration(info.elapsed_s), "ETA": info.eta_text,
            "validation": score, "fallback": fb}
