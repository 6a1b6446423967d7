"""The heartbeat light: HEARTBEAT events plus a local stall detector."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from nx47_pipeline.telemetry.events import Event, EventKind, Status, WorkerState

__all__ = ["HeartbeatView", "HeartbeatState", "WAITING", "KILLED", "LOST"]

#: The light before a run started (the other states are :class:`WorkerState` values).
WAITING = "WAITING"
#: The light of a run whose process was killed (no final event; ``killed.json``).
KILLED = "KILLED"
#: The light of a run whose process died without a final event.
LOST = "LOST"

_ACTIVE = WorkerState.ACTIVE.value
_COMPUTING = WorkerState.COMPUTING.value
_STALLED = WorkerState.STALLED.value
_FINISHED = WorkerState.FINISHED.value
_FAILED = WorkerState.FAILED.value
_CANCELLED = WorkerState.CANCELLED.value

_WORDS = {
    WAITING: "waiting for the run",
    _ACTIVE: "active: progress is being reported",
    _COMPUTING: "computing: busy, no new progress yet",
    _STALLED: "stalled: no heartbeat or CPU activity",
    _FINISHED: "finished",
    _FAILED: "failed",
    _CANCELLED: "cancelled",
    KILLED: "killed: the run's process was killed",
    LOST: "lost: the run's process ended without a final event",
}

#: Seconds since the last progress within which the light says ACTIVE, until
#: the run's CONFIG gives its ``progress_max_gap_s``.
DEFAULT_ACTIVE_WITHIN_S = 5.0

@dataclass(frozen=True)
class HeartbeatView:
    """What the heartbeat light shows at one instant."""

    state: str  # WAITING | ACTIVE | COMPUTING | STALLED | FINISHED | FAILED | CANCELLED
    since_beat_s: float | None
    since_progress_s: float | None
    cpu_pct: float | None
    rss_mb: float | None
    message: str = ""

    @property
    def words(self) -> str:
        """The state in words."""
        return _WORDS.get(self.state, self.state.lower())


def _final_light(status: Status) -> str:
    """The light of a run that ended with ``status``."""
    if status == Status.OK:
        return _FINISHED
    if status == Status.CANCELLED:
        return _CANCELLED
    return _FAILED


class HeartbeatState:
    """Reducer for HEARTBEAT events with a local stall detector.

    The light turns STALLED by itself when no heartbeat has arrived for
    ``stall_factor`` heartbeat intervals (at least ``min_stall_s`` seconds),
    even if the last beat said ACTIVE: a dead or frozen worker cannot say so.
    Between beats the words follow the age of the last progress: ACTIVE
    while it is younger than the run's ``progress_max_gap_s`` (CONFIG;
    5 s by default), else COMPUTING (a beat's STALLED stays until progress
    arrives).  Once the run ended, the ages stop counting at its end.

    Parameters
    ----------
    clock : callable, optional
        Wall-clock source (``time.time``); tests inject a fake one.  Beat ages
        are measured against the events' ``ts`` so that a followed journal and
        an in-process queue agree.
    stall_factor : float
        Heartbeat intervals without a beat before the light turns STALLED.
    min_stall_s : float
        Lower bound of that silence, in seconds.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 stall_factor: float = 3.0, min_stall_s: float = 3.0) -> None:
        self.clock = clock
        self.stall_factor = stall_factor
        self.min_stall_s = min_stall_s
        self.version = 0
        self.reset()

    def reset(self) -> None:
        """Forget the run (the light goes back to WAITING)."""
        self.running = False
        self.started_ts: float | None = None
        self.last_beat_ts: float | None = None
        self.last_progress_ts: float | None = None
        self.beat_state: str | None = None
        self.interval_s: float = 15.0
        self.active_within_s: float = DEFAULT_ACTIVE_WITHIN_S
        self.cpu_pct: float | None = None
        self.rss_mb: float | None = None
        self.message = ""
        self.final: str | None = None
        self.ended_ts: float | None = None

    def apply(self, event: Event) -> bool:
        """Apply one event; True for RUN_START, CONFIG, HEARTBEAT, PROGRESS_UPDATE, EXEC_COMPLETE.

        Parameters
        ----------
        event : Event
            Any event.

        Returns
        -------
        bool
            True when the event concerns the light.
        """
        kind, p = event.kind, event.payload
        if kind is EventKind.RUN_START:
            self.reset()
            self.running = True
            self.started_ts = event.ts
        elif kind is EventKind.CONFIG:
            interval = (p.config or {}).get("heartbeat_interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                self.interval_s = float(interval)
            gap = (p.config or {}).get("progress_max_gap_s")
            if isinstance(gap, (int, float)) and gap > 0:
                self.active_within_s = float(gap)
        elif kind is EventKind.HEARTBEAT:
            self.running = self.final is None
            self.last_beat_ts = event.ts
            self.beat_state = p.state
            self.interval_s = float(p.interval_s) if p.interval_s else self.interval_s
            self.cpu_pct = p.cpu_pct
            self.rss_mb = p.rss_mb
            self.message = p.message
            self.last_progress_ts = event.ts - float(p.since_progress_s)
            if p.state in (_FINISHED, _FAILED, _CANCELLED):
                self.final = p.state
                self.ended_ts = event.ts
        elif kind is EventKind.PROGRESS_UPDATE:
            self.last_progress_ts = event.ts
            if self.started_ts is None:
                self.started_ts = event.ts
                self.running = self.final is None
        elif kind is EventKind.EXEC_COMPLETE:
            self.final = _final_light(p.status)
            self.running = False
            self.ended_ts = event.ts
        else:
            return False
        self.version += 1
        return True

    def end_without_event(self, state: str, message: str, now: float | None = None) -> None:
        """The run's process is gone and said nothing: the light shows ``state``.

        Parameters
        ----------
        state : str
            :data:`KILLED` or :data:`LOST`.
        message : str
            Why (shown under the light).
        now : float, optional
            When (default: the clock); the ages stop there.
        """
        if self.final is not None and self.final not in (KILLED, LOST):
            return
        self.final, self.running, self.message = state, False, message
        self.ended_ts = self.clock() if now is None else now
        self.version += 1

    @property
    def stall_after_s(self) -> float:
        """Seconds without a beat after which the light turns STALLED by itself."""
        return max(self.min_stall_s, self.stall_factor * self.interval_s)

    def view(self, now: float | None = None) -> HeartbeatView:
        """The light at wall time ``now``.

        Parameters
        ----------
        now : float, optional
            Wall time (default: the clock).

        Returns
        -------
        HeartbeatView
        """
        now = self.clock() if now is None else now
        if self.final is not None and self.ended_ts is not None:
            now = min(now, self.ended_ts)  # a finished run's ages stop counting
        since_beat = None if self.last_beat_ts is None else max(0.0, now - self.last_beat_ts)
        since_prog = None if self.last_progress_ts is None else max(0.0, now - self.last_progress_ts)
        if self.final is not None:
            state = self.final
        elif not self.running:
            state = WAITING
        else:
            reference = self.last_beat_ts if self.last_beat_ts is not None else self.started_ts
            silent = None if reference is None else now - reference
            if silent is not None and silent > self.stall_after_s:
                state = _STALLED
            elif since_prog is not None and since_prog < self.active_within_s:
                state = _ACTIVE  # progress is fresh, whatever the last beat said
            elif self.beat_state in (_COMPUTING, _STALLED):
                state = self.beat_state
            elif since_prog is not None or self.beat_state == _ACTIVE:
                state = _COMPUTING  # the last progress is older than the gap: inside a long step
            else:
                state = _ACTIVE  # running, no progress or beat yet, within the grace period
        return HeartbeatView(
            state=state,
            since_beat_s=since_beat,
            since_progress_s=since_prog,
            cpu_pct=self.cpu_pct,
            rss_mb=self.rss_mb,
            message=self.message,
        )
