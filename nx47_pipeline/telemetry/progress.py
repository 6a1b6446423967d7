"""Progress bookkeeping of :class:`~nx47_pipeline.telemetry.facade.Telemetry`:
the rate of the finest active counter, the PROGRESS_UPDATE throttle, and the
payload of a due report (:func:`progress_payload`)."""

from __future__ import annotations

import threading
from typing import Any

from nx47_pipeline.telemetry.events import ProgressPayload
from nx47_pipeline.telemetry.plan import PlanTracker


class StageStack:
    """The open stages, innermost last (thread-safe)."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._lock = threading.Lock()

    def push(self, name: str) -> None:
        with self._lock:
            self._names.append(name)

    def pop(self, name: str) -> None:
        """Remove the innermost occurrence of ``name`` (no-op when absent)."""
        with self._lock:
            if name in self._names:
                del self._names[len(self._names) - 1 - self._names[::-1].index(name)]

    @property
    def current(self) -> str:
        """The innermost open stage, "" when none."""
        names = self._names
        return names[-1] if names else ""


class _Counter:
    """Rate of one progress counter (files or sub-steps) within a stage."""

    __slots__ = ("key", "t0", "done0", "last")

    def __init__(self, key: Any, t0: float, done0: float) -> None:
        self.key, self.t0, self.done0, self.last = key, t0, done0, done0


class ProgressThrottle:
    """Per-stage counters and publication times.

    Parameters
    ----------
    interval_s : float
        Minimum seconds between two published reports of a stage; the first
        report of a stage, a report that completes a counter, and a change of
        file or sub-step name are always due.  0: every report is due.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = float(interval_s)
        self._stage_t0: dict[str, float] = {}
        self._last_pub: dict[str, float] = {}
        self._last_names: dict[str, tuple[str, str]] = {}
        self._counters: dict[tuple[str, str], _Counter] = {}

    def begin(self, name: str, t0: float) -> None:
        """Stage ``name`` (re)starts at ``t0``: its counters start afresh."""
        self._stage_t0[name] = t0
        self._last_pub.pop(name, None)
        self._last_names.pop(name, None)
        for key in [k for k in self._counters if k[0] == name]:
            del self._counters[key]

    def _rate(self, name: str, level: str, label: Any, done: float, now: float) -> float | None:
        key = (name, level)
        c = self._counters.get(key)
        if c is None or c.key != label or done < c.last:
            # a new counter (other total, or the count restarted, e.g. next file)
            c = _Counter(label, self._stage_t0.get(name, now) if c is None else now,
                         0.0 if c is None else done)
            self._counters[key] = c
        c.last = done
        dt = now - c.t0
        if dt <= 0 or done <= c.done0:
            return None
        return (done - c.done0) / dt

    def rate(self, name: str, now: float, *, substep_done: float, substep_total: int,
             file_done: float, file_total: int) -> float | None:
        """Units per second of the finest active counter (sub-steps, then files); None when unknown."""
        rate = None
        if substep_total:
            rate = self._rate(name, "sub", substep_total, substep_done, now)
        if rate is None and file_total:
            rate = self._rate(name, "file", file_total, file_done, now)
        return rate

    def due(self, name: str, now: float, *, names: tuple[str, str], complete: bool) -> bool:
        """Whether a report of stage ``name`` is published now (and record it if so)."""
        last = self._last_pub.get(name)
        if (last is None or now - last >= self.interval_s or complete
                or self._last_names.get(name) != names):
            self._last_pub[name] = now
            self._last_names[name] = names
            return True
        return False


def progress_payload(plan: PlanTracker, throttle: ProgressThrottle, name: str, now: float, *,
                     step_done: float | None = None, step_total: float | None = None, substep: str = "",
                     substep_done: int = 0, substep_total: int = 0, file: str = "", file_done: int = 0,
                     file_total: int = 0, message: str = "", worker: str = "") -> ProgressPayload | None:
    """Fold one progress report of stage ``name`` into ``plan``; its payload when one is due.

    Parameters
    ----------
    plan : PlanTracker
        Gets the stage's counter (``step_done`` / ``step_total``); gives the
        global figure, the ETA and the stage's rate when no finer counter has one.
    throttle : ProgressThrottle
        Says whether the report is published (and gives the finest rate).
    name : str
        The open stage ("" outside stages: the plan is left alone).
    now : float
        Monotonic seconds.
    step_done, step_total, substep, substep_done, substep_total, file, file_done, file_total, message, worker
        The report (see :meth:`Telemetry.progress <nx47_pipeline.telemetry.facade.Telemetry.progress>`).

    Returns
    -------
    ProgressPayload or None
        None when the throttle holds the report back.
    """
    if name:
        if step_done is not None or step_total is not None:
            done = plan.counters(name)[0] if step_done is None else step_done
            plan.update(name, done, step_total)
        rate = throttle.rate(name, now, substep_done=substep_done, substep_total=substep_total,
                             file_done=file_done, file_total=file_total)
        if rate is None:
            rate = plan.rate(name)
        done, total = plan.counters(name)
        index = plan.index_of(name)
    else:
        rate, index = None, -1
        done = float(step_done or 0.0)
        total = float(step_total or 0.0)
    complete = (total > 0 and done >= total) or (
        substep_total > 0 and substep_done >= substep_total
    ) or (file_total > 0 and file_done >= file_total)
    if not throttle.due(name, now, names=(file, substep), complete=complete):
        return None
    return ProgressPayload(
        step=name, step_index=index, step_count=len(plan), step_done=done, step_total=total,
        substep=substep, substep_done=int(substep_done), substep_total=int(substep_total),
        file=str(file), file_done=int(file_done), file_total=int(file_total),
        global_=plan.overall_progress(), rate=rate, eta_s=plan.eta_s(), message=message, worker=worker)
