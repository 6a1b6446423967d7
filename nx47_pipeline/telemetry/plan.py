"""PlanTracker: the weighted plan of stages and the one global progress figure.

Each stage has a weight (its expected share of the run's cost), a status and
a ``done / total`` counter.  :meth:`PlanTracker.overall_progress` is the only
source of the run's global progress: PROGRESS_UPDATE payloads and the
``plan.json`` snapshot both read it, and it never goes backwards (a re-plan
that would lower it holds the figure until real progress catches up).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.telemetry.events import MessagePayload, Status

__all__ = ["PlanTracker", "PlanSnapshots", "STATUSES", "DONE_STATUSES"]

#: Stage statuses.  ``pending`` and ``running`` are open; the others are done.
STATUSES = (Status.PENDING, Status.RUNNING, Status.OK, Status.SKIPPED, Status.FAILED,
            Status.CANCELLED, Status.BUDGET)
#: Statuses in which a stage counts as complete for the global figure.
DONE_STATUSES = frozenset(s for s in STATUSES if s.done)


class _Stage:
    __slots__ = ("name", "weight", "status", "done", "total", "t_start", "t_end", "reason")

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.status = Status.PENDING
        self.done = 0.0
        self.total = 1.0
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.reason = ""

    def fraction(self) -> float:
        if self.status in DONE_STATUSES:
            return 1.0
        if self.total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.done / self.total))


def _check_weight(name: str, weight: float) -> float:
    w = float(weight)
    if not (w >= 0.0) or w == float("inf"):
        raise ValueError(f"weight of stage {name!r} must be a finite number >= 0, got {weight!r}")
    return w


class PlanTracker:
    """Weighted plan of stages with monotonic global progress and ETA.

    Parameters
    ----------
    stages : sequence of (name, weight)
        The stages in run order; ``weight`` is the expected cost (any unit;
        only ratios matter).  Names must be unique.
    clock : callable
        Monotonic clock in seconds (injectable for tests).

    Notes
    -----
    ``overall_progress = max(previous, sum(w_i * f_i) / sum(w_i))`` where
    ``f_i`` is the fraction of stage *i* (1 once finished, skipped, failed or
    cancelled).  ``eta_s`` extrapolates the observed global rate:
    ``elapsed * (1 - g) / g`` with ``elapsed`` counted from the first stage
    start -- the weights make global progress proportional to expected time.
    All methods are thread-safe.
    """

    def __init__(
        self,
        stages: Sequence[tuple[str, float]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._stages: list[_Stage] = []
        self._index: dict[str, int] = {}
        for item in stages:
            try:
                name, weight = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"stages must be (name, weight) pairs, got {item!r}"
                ) from None
            self.add_stage(str(name), weight)
        self._high = 0.0
        self._t_first: float | None = None

    # ------------------------------------------------------------------
    def add_stage(self, name: str, weight: float = 0.0) -> None:
        """Append a stage to the plan (for stages not planned up front)."""
        w = _check_weight(name, weight)
        with self._lock:
            if name in self._index:
                raise ValueError(f"stage {name!r} is already in the plan")
            self._index[name] = len(self._stages)
            self._stages.append(_Stage(name, w))

    @property
    def stage_names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._stages]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._stages)

    def index_of(self, name: str) -> int:
        """Position of stage ``name`` in the plan (0-based)."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"stage {name!r} is not in the plan {self.stage_names!r}"
            ) from None

    def _get(self, name: str) -> _Stage:
        return self._stages[self.index_of(name)]

    # ------------------------------------------------------------------
    def start(self, name: str, total: float = 1.0) -> None:
        """Mark stage ``name`` running with ``total`` units of work."""
        total = float(total)
        if not total >= 0:
            raise ValueError(f"total of stage {name!r} must be >= 0, got {total!r}")
        with self._lock:
            st = self._get(name)
            now = self._clock()
            if self._t_first is None:
                self._t_first = now
            st.status = Status.RUNNING
            st.total = total
            st.done = 0.0
            st.t_start = now
            st.t_end = None
            self._bump()

    def update(self, name: str, done: float, total: float | None = None) -> None:
        """Set the ``done`` counter (and optionally ``total``) of stage ``name``.

        A pending stage is started implicitly; updates to a finished stage are
        ignored.
        """
        with self._lock:
            st = self._get(name)
            if st.status in DONE_STATUSES:
                return
            if st.status == Status.PENDING:
                self.start(name, st.total if total is None else total)
            if total is not None:
                total = float(total)
                if not total >= 0:
                    raise ValueError(f"total of stage {name!r} must be >= 0, got {total!r}")
                st.total = total
            st.done = max(0.0, float(done))
            self._bump()

    def finish(self, name: str, status: Status | str = Status.OK) -> None:
        """Close stage ``name`` with ``status`` (ok, failed, cancelled, budget, skipped)."""
        if status not in DONE_STATUSES:
            raise ValueError(
                f"status must be one of {sorted(str(s) for s in DONE_STATUSES)}, got {status!r}"
            )
        status = Status(status)
        with self._lock:
            st = self._get(name)
            now = self._clock()
            if st.t_start is None:
                st.t_start = now
                if self._t_first is None:
                    self._t_first = now
            if status == Status.OK:
                st.done = max(st.done, st.total)
            st.status = status
            st.t_end = now
            self._bump()

    def skip(self, name: str, reason: str = "") -> None:
        """Mark stage ``name`` skipped (counts as complete)."""
        with self._lock:
            self.finish(name, Status.SKIPPED)
            self._get(name).reason = reason

    def set_weight(self, name: str, weight: float) -> None:
        """Re-plan: change the expected cost of stage ``name``.

        The global figure never goes back: if the new weights give a lower
        value it is held until progress catches up.
        """
        w = _check_weight(name, weight)
        with self._lock:
            self._get(name).weight = w
            self._bump()

    def replan(self, projected_s: Mapping[str, float]) -> None:
        """Re-weight every stage by time, once a projection exists.

        A stage that ran (or runs) weighs the seconds it took so far (at
        least its projection while it runs), a skipped stage nothing, a
        pending stage its projected seconds (nothing when it is not
        projected: it will not run).  The global figure then follows the
        run's projected time, not its count of stages; it never goes back.

        Parameters
        ----------
        projected_s : mapping of str to float
            Projected seconds of the stages still to run.
        """
        with self._lock:
            now = self._clock()
            for st in self._stages:
                proj = projected_s.get(st.name)
                proj = None if proj is None else _check_weight(st.name, proj)
                if st.status == Status.SKIPPED:
                    w = 0.0
                elif st.t_start is not None:
                    ran = (st.t_end if st.t_end is not None else now) - st.t_start
                    w = ran if st.status in DONE_STATUSES else max(ran, proj or 0.0)
                else:
                    w = proj or 0.0
                st.weight = max(0.0, float(w))
            self._bump()

    # ------------------------------------------------------------------
    def status(self, name: str) -> str:
        with self._lock:
            return self._get(name).status

    def seconds(self, name: str) -> float | None:
        """Seconds stage ``name`` ran (so far, when running); None when it never
        started or was skipped."""
        with self._lock:
            st = self._get(name)
            if st.t_start is None or st.status == Status.SKIPPED:
                return None
            end = st.t_end if st.t_end is not None else self._clock()
            return max(0.0, end - st.t_start)

    def counters(self, name: str) -> tuple[float, float]:
        """``(done, total)`` of stage ``name``."""
        with self._lock:
            st = self._get(name)
            return st.done, st.total

    def _raw(self) -> float:
        total_w = sum(s.weight for s in self._stages)
        if total_w <= 0:
            n = len(self._stages)
            return sum(s.fraction() for s in self._stages) / n if n else 0.0
        return sum(s.weight * s.fraction() for s in self._stages) / total_w

    def _bump(self) -> float:
        raw = min(1.0, max(0.0, self._raw()))
        if raw > self._high:
            self._high = raw
        return self._high

    def overall_progress(self) -> float:
        """Global progress in [0, 1]; monotonic non-decreasing."""
        with self._lock:
            return self._bump()

    def elapsed_s(self) -> float:
        """Seconds since the first stage started (0 before)."""
        with self._lock:
            return 0.0 if self._t_first is None else self._clock() - self._t_first

    def eta_s(self) -> float | None:
        """Seconds left for the whole plan, from the observed rate (None if unknown)."""
        with self._lock:
            g = self._bump()
            if g >= 1.0:
                return 0.0
            if self._t_first is None or g <= 1e-4:
                return None
            elapsed = self._clock() - self._t_first
            if elapsed <= 0:
                return None
            return elapsed * (1.0 - g) / g

    def rate(self, name: str) -> float | None:
        """Observed units per second of stage ``name`` since it started."""
        with self._lock:
            st = self._get(name)
            if st.t_start is None:
                return None
            end = st.t_end if st.t_end is not None else self._clock()
            dt = end - st.t_start
            if dt <= 0 or st.done <= 0:
                return None
            return st.done / dt

    # ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state: stages (weight, status, done, total, fraction,
        duration), ``global``, ``eta_s``, ``elapsed_s``."""
        with self._lock:
            now = self._clock()
            stages = []
            for i, st in enumerate(self._stages):
                if st.t_start is None:
                    dur = None
                else:
                    dur = (st.t_end if st.t_end is not None else now) - st.t_start
                stages.append(
                    {
                        "name": st.name,
                        "index": i,
                        "weight": st.weight,
                        "status": st.status,
                        "done": st.done,
                        "total": st.total,
                        "fraction": st.fraction(),
                        "duration_s": dur,
                        "reason": st.reason,
                    }
                )
            return {
                "stages": stages,
                "global": self._bump(),
                "eta_s": self.eta_s(),
                "elapsed_s": self.elapsed_s(),
            }

    def write_snapshot(self, path: str | os.PathLike) -> dict[str, Any]:
        """Write :meth:`snapshot` as JSON to ``path`` atomically; return it."""
        snap = self.snapshot()
        path = Path(path)
        write_json(path, snap)
        return snap


class PlanSnapshots:
    """Rewrites a plan's ``plan.json`` atomically, at most every ``interval_s`` unless forced.

    Parameters
    ----------
    plan : PlanTracker
    path : path-like
        The run folder's ``plan.json``.
    interval_s : float
        Minimum seconds between two unforced writes.
    mono, clock : callable
        Monotonic clock (the interval) and wall clock (``updated_ts``).
    """

    def __init__(self, plan: PlanTracker, path: str | os.PathLike, *, interval_s: float,
                 mono: Callable[[], float] = time.monotonic, clock: Callable[[], float] = time.time) -> None:
        self.plan, self.path = plan, Path(path)
        self.interval_s = float(interval_s)
        self._mono, self._clock = mono, clock
        self._last = float("-inf")
        self._warned = False

    def write(self, run_id: str, *, force: bool = False) -> MessagePayload | None:
        """Write the snapshot (with ``run_id`` and ``updated_ts``) when due or ``force``d.

        Returns
        -------
        MessagePayload or None
            The WARNING to publish when a write failed, the first time only.
        """
        now = self._mono()
        if not force and now - self._last < self.interval_s:
            return None
        self._last = now
        try:
            snap = self.plan.snapshot()
            snap["run_id"] = run_id
            snap["updated_ts"] = self._clock()
            write_json(self.path, snap, allow_nan=False, default=str)
        except OSError as exc:
            if self._warned:
                return None
            self._warned = True
            return MessagePayload(message=f"cannot write {self.path.name}: {exc}", subject=self.path.name,
                                  code="plan_write_failed")
        return None
