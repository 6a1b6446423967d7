"""Silences in a journal: the longest time each stage computed without a
PROGRESS_UPDATE.

A stage "computes" from its STEP begin to its STEP end.  Within that span the
instants that count are the begin, every PROGRESS_UPDATE published under the
stage's name, and the end; the longest distance between two consecutive
instants is the stage's longest silence.  HEARTBEAT events do not count: they
prove the process is alive, not that the work moves.

Used by ``benchmarks/bench_progress_gaps.py`` and the tests that hold the
pipeline to :attr:`~nx47_pipeline.config.RunConfig.progress_max_gap_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from nx47_pipeline.telemetry.events import Event, EventKind, StepPhase

__all__ = ["ProgressGap", "progress_gaps"]


@dataclass(frozen=True)
class ProgressGap:
    """The longest silence of one run of one stage.

    Attributes
    ----------
    stage : str
        The stage's name.
    gap_s : float
        Longest seconds between two consecutive progress instants (begin,
        PROGRESS_UPDATE, end) of the stage.
    at_s : float
        Seconds into the run (the events' ``t``) where that silence began.
    after : str
        What the last report before the silence said (sub-step, file or
        message), "" when the silence began at the stage's begin.
    before : str
        What the first report after the silence said, "" when it ended at the
        stage's end.
    stage_s : float
        Seconds the stage ran.
    updates : int
        PROGRESS_UPDATE events of the stage.
    over : int
        Silences longer than the ``limit_s`` given to :func:`progress_gaps`.
    """

    stage: str
    gap_s: float
    at_s: float
    after: str
    before: str
    stage_s: float
    updates: int
    over: int = 0


def _what(event: Event | None) -> str:
    if event is None or event.kind is not EventKind.PROGRESS_UPDATE:
        return ""
    p = event.payload
    parts = [str(x) for x in (p.substep, p.file, p.message) if x]
    return " | ".join(parts)


def progress_gaps(events: Iterable[Event], *, limit_s: float | None = None) -> list[ProgressGap]:
    """The longest progress silence of every stage run in ``events``.

    Parameters
    ----------
    events : iterable of Event
        A run's events in order (e.g. :func:`~nx47_pipeline.telemetry.journal.read_journal`).
        A RUN_START (a resumed run) closes the stages left open before it.
    limit_s : float, optional
        Silences longer than this are counted in :attr:`ProgressGap.over`.

    Returns
    -------
    list of ProgressGap
        One per stage run that ended (STEP end), in the order they began.
    """
    open_: dict[str, dict] = {}
    order: list[tuple[int, str]] = []
    done: dict[int, ProgressGap] = {}
    k = 0
    for ev in events:
        if ev.kind is EventKind.RUN_START:
            open_.clear()
            continue
        name = str(ev.stage)
        if ev.kind is EventKind.STEP:
            if ev.payload.phase == StepPhase.BEGIN:
                open_[name] = {"k": k, "t0": ev.ts, "t_run0": ev.t, "last": ev.ts, "last_ev": None,
                               "best": (0.0, ev.t, "", ""), "n": 0, "over": 0}
                order.append((k, name))
                k += 1
                continue
            st = open_.pop(name, None)
            if st is None:
                continue
            _step(st, ev, None, limit_s)
            gap, at, after, before = st["best"]
            done[st["k"]] = ProgressGap(stage=name, gap_s=round(gap, 3), at_s=round(at, 3), after=after,
                                        before=before, stage_s=round(ev.ts - st["t0"], 3),
                                        updates=st["n"], over=st["over"])
        elif ev.kind is EventKind.PROGRESS_UPDATE and name in open_:
            st = open_[name]
            st["n"] += 1
            _step(st, ev, ev, limit_s)
    return [done[i] for i, _ in order if i in done]


def _step(st: dict, ev: Event, progress: Event | None, limit_s: float | None) -> None:
    gap = ev.ts - st["last"]
    if limit_s is not None and gap > limit_s:
        st["over"] += 1
    if gap > st["best"][0]:
        st["best"] = (gap, ev.t - gap, _what(st["last_ev"]), _what(progress))
    st["last"] = ev.ts
    st["last_ev"] = progress
