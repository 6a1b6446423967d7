"""How a run ended, in one word and one sentence (its colour: ``views.colours``).

The pipeline's EXEC_COMPLETE says ``ok``, ``failed``, ``cancelled`` or
``preflight_failed``; a run that is ``ok`` may still have segmented some or
all test volumes with the fallback, had stages cut by the budget, or skipped
stages — :func:`classify` reads that from GLOBAL_STATS (``stats.json``).  Two
ends have no event at all: **killed** (a dashboard killed the process after
Stop, ``killed.json``) and **lost** (the process died without a final event).
The status line, the results card, the heartbeat light and the runs page
all show these words (and the colour ``views.colours`` gives each outcome).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from nx47_pipeline.telemetry.events import StageName, Status

__all__ = ["Outcome", "Verdict", "classify"]


class Outcome(str, enum.Enum):
    """What the dashboard says about a run."""

    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"  # ok, some stages skipped
    BUDGET = "budget"  # ok, some stages cut by the budget
    FALLBACK = "fallback"  # ok, some or all test volumes segmented by the fallback
    CANCELLED = "cancelled"
    PREFLIGHT_FAILED = "preflight_failed"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


_LABELS = {
    Outcome.RUNNING: "running",
    Outcome.OK: "ok",
    Outcome.SKIPPED: "ok, stages skipped",
    Outcome.BUDGET: "ok, cut by the budget",
    Outcome.FALLBACK: "fallback segmentation",
    Outcome.CANCELLED: "cancelled",
    Outcome.PREFLIGHT_FAILED: "preflight failed",
    Outcome.FAILED: "failed",
    Outcome.KILLED: "killed",
    Outcome.LOST: "lost",
}


@dataclass(frozen=True)
class Verdict:
    """An outcome with its label and sentence."""

    outcome: Outcome
    words: str

    @property
    def label(self) -> str:
        return _LABELS[self.outcome]


def _stages_with(stage_status: Mapping[str, Any], status: Status) -> list[str]:
    out = []
    for name, st in stage_status.items():
        try:
            if Status(st) is status:
                out.append(str(StageName(name)))
        except ValueError:
            continue
    return out


def classify(status: Status | str | None, stats: Mapping[str, Any] | None = None, *,
             killed: str | None = None, lost: str | None = None) -> Verdict:
    """The verdict on a run.

    Parameters
    ----------
    status : Status, str or None
        EXEC_COMPLETE's status (None: no final event yet).
    stats : mapping, optional
        GLOBAL_STATS / ``stats.json`` (``counts.fallback_volumes``,
        ``counts.test``, ``stage_status``).
    killed : str, optional
        Why the run's process was killed (``killed.json``).
    lost : str, optional
        Why the run counts as lost (its process died without a final event).

    Returns
    -------
    Verdict
    """
    if status is None:
        if killed:
            return Verdict(Outcome.KILLED, f"killed: {killed}")
        if lost:
            return Verdict(Outcome.LOST, f"lost: {lost}")
        return Verdict(Outcome.RUNNING, "running")
    try:
        st = Status(status)
    except ValueError:
        return Verdict(Outcome.FAILED, f"ended with an unknown status {status!r}")
    stats = stats or {}
    counts = stats.get("counts") or {}
    n_fb, n_test = int(counts.get("fallback_volumes") or 0), int(counts.get("test") or 0)
    fb_words = (f"{n_fb} of {n_test} test volumes got the fallback segmentation"
                if n_test else f"{n_fb} test volumes got the fallback segmentation")
    if st is Status.CANCELLED:
        return Verdict(Outcome.CANCELLED, "cancelled: stopped before the end")
    if st is Status.PREFLIGHT_FAILED:
        return Verdict(Outcome.PREFLIGHT_FAILED,
                       "preflight failed: no model was trained; " + fb_words)
    if st is not Status.OK:
        return Verdict(Outcome.FAILED, "failed: see the event log")
    if n_fb and n_test and n_fb >= n_test:
        return Verdict(Outcome.FALLBACK, f"finished on the fallback: all {fb_words}, "
                                         "no model segmentation in the submission")
    if n_fb:
        return Verdict(Outcome.FALLBACK, f"finished, partly on the fallback: {fb_words}")
    stage_status = stats.get("stage_status") or {}
    cut = _stages_with(stage_status, Status.BUDGET)
    if cut:
        return Verdict(Outcome.BUDGET, "finished with stages cut by the budget: " + ", ".join(cut))
    skipped = _stages_with(stage_status, Status.SKIPPED)
    if skipped:
        return Verdict(Outcome.SKIPPED, "finished; skipped: " + ", ".join(skipped))
    return Verdict(Outcome.OK, "finished")
