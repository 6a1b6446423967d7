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
from typing import Iterable, Iterator

from nx47_pipeline.telemetry.events import Event, EventKind, StepPhase

__all__ = ["ProgressGap", "Silence", "progress_gaps", "silences"]


@dataclass(frozen=True)
class Silence:
    """The time between two consecutive progress instants of a stage.

    Attributes
    ----------
    stage : str
        The stage.
    run : int
        Which run of a stage it belongs to (0 for the first stage begun in
        the events, counting every STEP begin).
    start_ts, end_ts : float
        Wall-clock times (the events' ``ts``) it began and ended.
    start_t : float
        Seconds into the run (the events' ``t``) it began.
    after, before : str
        What the last report before it and the first after it said ("" for
        the stage's begin / end).
    """

    stage: str
    run: int
    start_ts: float
    end_ts: float
    start_t: float
    after: str
    before: str

    @property
    def seconds(self) -> float:
        return self.end_ts - self.start_ts


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
    longest : Silence or None
        The longest silence itself.
    """

    stage: str
    gap_s: float
    at_s: float
    after: str
    before: str
    stage_s: float
    updates: int
    over: int = 0
    longest: Silence | None = None


def _what(event: Event | None) -> str:
    if event is None or event.kind is not EventKind.PROGRESS_UPDATE:
        return ""
    p = event.payload
    parts = [str(x) for x in (p.substep, p.file, p.message) if x]
    return " | ".join(parts)


def _walk(events: Iterable[Event]) -> Iterator[tuple[str, object]]:
    """("silence", Silence), ("end", (run, stage, seconds, updates)) in order;
    ("begin", (run, stage)) as stages begin."""
    open_: dict[str, dict] = {}
    k = 0
    for ev in events:
        if ev.kind is EventKind.RUN_START:
            open_.clear()
            continue
        name = str(ev.stage)
        if ev.kind is EventKind.STEP:
            if ev.payload.phase == StepPhase.BEGIN:
                open_[name] = {"k": k, "t0": ev.ts, "last": ev.ts, "last_t": ev.t, "last_ev": None, "n": 0}
                yield "begin", (k, name)
                k += 1
                continue
            st = open_.pop(name, None)
            if st is None:
                continue
            yield "silence", Silence(name, st["k"], st["last"], ev.ts, st["last_t"], _what(st["last_ev"]), "")
            yield "end", (st["k"], name, ev.ts - st["t0"], st["n"])
        elif ev.kind is EventKind.PROGRESS_UPDATE and name in open_:
            st = open_[name]
            st["n"] += 1
            yield "silence", Silence(name, st["k"], st["last"], ev.ts, st["last_t"], _what(st["last_ev"]),
                                     _what(ev))
            st["last"], st["last_t"], st["last_ev"] = ev.ts, ev.t, ev


def silences(events: Iterable[Event], *, open_stages: bool = False) -> list[Silence]:
    """Every silence of every stage run that ended, in order.

    Parameters
    ----------
    events : iterable of Event
        A run's events in order.  A RUN_START (a resumed run) closes the
        stages left open before it.
    open_stages : bool
        Also the silences so far of the stages still open at the last event
        (a run read while it runs, or stopped).

    Returns
    -------
    list of Silence
    """
    out: list[Silence] = []
    pending: dict[int, list[Silence]] = {}
    for what, item in _walk(events):
        if what == "silence":
            pending.setdefault(item.run, []).append(item)  # type: ignore[union-attr]
        elif what == "end":
            out += pending.pop(item[0], [])  # type: ignore[index]
    if open_stages:
        for run in sorted(pending):
            out += pending[run]
    return out


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
    order: list[int] = []
    found: dict[int, list[Silence]] = {}
    done: dict[int, ProgressGap] = {}
    for what, item in _walk(events):
        if what == "begin":
            order.append(item[0])  # type: ignore[index]
        elif what == "silence":
            found.setdefault(item.run, []).append(item)  # type: ignore[union-attr]
        else:
            k, name, stage_s, n = item  # type: ignore[misc]
            gaps = found.pop(k, [])
            worst = max(gaps, key=lambda s: s.seconds)
            over = sum(1 for s in gaps if limit_s is not None and s.seconds > limit_s)
            done[k] = ProgressGap(stage=name, gap_s=round(worst.seconds, 3), at_s=round(worst.start_t, 3),
                                  after=worst.after, before=worst.before, stage_s=round(stage_s, 3),
                                  updates=n, over=over, longest=worst)
    return [done[k] for k in order if k in done]
