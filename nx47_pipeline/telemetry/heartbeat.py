"""Heartbeat monitor: proves the run is alive and says what the worker does.

A daemon thread wakes every ``interval_s`` (by waiting on a
:class:`threading.Event`, so it keeps beating while the worker is deep inside
a numpy or torch call that holds no Python lock for long) and publishes a
HEARTBEAT that classifies the worker thread:

ACTIVE
    progress was reported less than ``active_within_s`` ago (the run's
    ``progress_max_gap_s``, 5 s by default: the work reports at least that
    often, so an older report means the worker is inside one long step);
COMPUTING
    no progress for ``active_within_s`` or more, but CPU time advanced during
    the last interval: the worker thread's own CPU clock
    (``time.pthread_getcpuclockid``) advanced by 5 % of the interval, or, for
    BLAS / OpenMP / torch pool threads that the worker's clock does not see,
    the rest of the process used a quarter of a core; also while no CPU
    advances but the silence is still shorter than ``stall_after_s`` (a read
    from a slow disk, a Dask worker's task);
STALLED
    no progress for ``stall_after_s`` or more and no CPU advancing;
FINISHED / FAILED / CANCELLED
    final states set by :meth:`HeartbeatMonitor.set_final`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from nx47_pipeline.telemetry.events import HeartbeatPayload, WorkerState

try:  # optional: /proc is read first; Kaggle images may lack psutil
    import psutil
except ImportError:  # pragma: no cover - depends on the image
    psutil = None

__all__ = ["HeartbeatMonitor", "thread_cpu_clock", "rss_mb"]

#: Worker-thread CPU (core-seconds per wall second) that counts as computing.
WORKER_CPU_FRAC = 0.05
#: Process CPU beyond the worker and heartbeat threads (cores) that counts as
#: computing: pool threads of BLAS / OpenMP / torch working for the worker.
#: High enough that idle kernel / dashboard threads do not mask a stall.
PROCESS_CPU_FRAC = 0.25

_FINAL = (WorkerState.FINISHED, WorkerState.FAILED, WorkerState.CANCELLED)


def thread_cpu_clock(thread: threading.Thread | None = None) -> Callable[[], float | None] | None:
    """A function returning the CPU seconds of ``thread`` (default: the caller).

    Uses ``time.pthread_getcpuclockid``; returns None where that is not
    available (non-POSIX) or the thread has not started.  The returned
    function gives None once the thread's clock can no longer be read.
    """
    if not hasattr(time, "pthread_getcpuclockid"):
        return None
    thread = thread or threading.current_thread()
    ident = thread.ident
    if ident is None:
        return None
    try:
        clk = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clk)
    except (OSError, OverflowError, ValueError):
        return None

    def read() -> float | None:
        if not thread.is_alive():
            return None
        try:
            return time.clock_gettime(clk)
        except OSError:
            return None

    return read


def rss_mb() -> float:
    """Resident set size of this process in MiB (0.0 if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        if psutil is None:
            return 0.0
        try:
            return psutil.Process().memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - a figure for a heartbeat, never fatal
            return 0.0


class HeartbeatMonitor:
    """Daemon thread publishing HEARTBEAT every ``interval_s``.

    Parameters
    ----------
    publish : callable
        ``publish(payload, stage)`` -- usually publishes a HEARTBEAT event.
    interval_s : float
        Seconds between beats (default 15).
    stall_after_s : float, optional
        Seconds without progress (and CPU) after which the worker is STALLED
        (default ``2 * interval_s``).
    active_within_s : float, optional
        Seconds since the last progress within which the worker is ACTIVE
        (default 5; never more than ``stall_after_s``).
    clock : callable
        Monotonic clock (injectable for tests).
    wait : callable, optional
        ``wait(timeout) -> bool`` used between beats; returning True (or
        :meth:`stop` having been called) ends the loop.  Default: waiting on
        the monitor's stop :class:`threading.Event`.
    worker_thread : threading.Thread, optional
        The thread doing the work (default: the thread calling :meth:`start`).
    budget_left : callable
        Returns the seconds of budget left (or None).
    stage : callable
        Returns the current stage name.
    thread_cpu : callable, optional
        Returns the worker's CPU seconds (default: its pthread CPU clock).
    process_cpu : callable
        Returns the process CPU seconds (default :func:`time.process_time`).
    """

    def __init__(
        self,
        publish: Callable[[HeartbeatPayload, str], None],
        *,
        interval_s: float = 15.0,
        stall_after_s: float | None = None,
        active_within_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
        worker_thread: threading.Thread | None = None,
        budget_left: Callable[[], float | None] = lambda: None,
        stage: Callable[[], str] = lambda: "",
        thread_cpu: Callable[[], float | None] | None = None,
        process_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if stall_after_s is not None and not stall_after_s > 0:
            raise ValueError(f"stall_after_s must be > 0 or None, got {stall_after_s!r}")
        if active_within_s is not None and not active_within_s > 0:
            raise ValueError(f"active_within_s must be > 0 or None, got {active_within_s!r}")
        self._publish = publish
        self.interval_s = float(interval_s)
        self.stall_after_s = float(2 * interval_s if stall_after_s is None else stall_after_s)
        self.active_within_s = min(self.stall_after_s, 5.0 if active_within_s is None else float(active_within_s))
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._worker = worker_thread
        self._budget_left = budget_left
        self._stage = stage
        self._thread_cpu = thread_cpu
        self._explicit_thread_cpu = thread_cpu is not None
        self._process_cpu = process_cpu
        self._own_cpu = None  # heartbeat thread's CPU clock (excluded from process CPU)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._final: WorkerState | None = None
        now = clock()
        self._t_start = now
        self._last_progress = now
        self._last_beat_t = now
        self._last_proc_cpu = self._safe(process_cpu)
        self._last_worker_cpu: float | None = None
        self._last_own_cpu: float | None = None
        self._last_cpu_advance = now
        self.beats = 0

    @staticmethod
    def _safe(fn: Callable[[], float | None] | None) -> float | None:
        if fn is None:
            return None
        try:
            return fn()
        except Exception:
            return None

    # ------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon thread (the worker defaults to the calling thread)."""
        if self._thread is not None:
            return
        if self._worker is None:
            self._worker = threading.current_thread()
        if self._thread_cpu is None:
            self._thread_cpu = thread_cpu_clock(self._worker)
        with self._lock:
            now = self._clock()
            self._t_start = self._last_progress = self._last_beat_t = now
            self._last_cpu_advance = now
            self._last_proc_cpu = self._safe(self._process_cpu)
            self._last_worker_cpu = self._safe(self._thread_cpu)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nx47-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self._explicit_thread_cpu:
            self._own_cpu = thread_cpu_clock()
            self._last_own_cpu = self._safe(self._own_cpu)
        while True:
            try:
                stop = self._wait(self.interval_s)
            except Exception:
                stop = False
            if stop or self._stop.is_set():
                return
            try:
                self.beat()
            except Exception:  # the monitor must outlive any error
                pass

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the daemon thread and wait up to ``timeout`` s for it."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify_progress(self) -> None:
        """Record that the worker reported progress now."""
        self._last_progress = self._clock()

    def set_final(self, state: WorkerState | str) -> None:
        """Set a final state (FINISHED, FAILED or CANCELLED) for later beats."""
        state = WorkerState(state)
        if state not in _FINAL:
            raise ValueError(
                f"state must be one of {[s.value for s in _FINAL]}, got {state.value!r}"
            )
        self._final = state

    # ------------------------------------------------------------------
    def _measure(self) -> tuple[float, float, float, float | None, bool]:
        """Advance the CPU counters: (now, window, cpu_pct, worker_cpu, advancing)."""
        now = self._clock()
        window = max(now - self._last_beat_t, 1e-9)
        proc = self._safe(self._process_cpu)
        worker = self._safe(self._thread_cpu)
        own = self._safe(self._own_cpu)
        d_proc = 0.0 if proc is None or self._last_proc_cpu is None else proc - self._last_proc_cpu
        d_worker = (
            None if worker is None or self._last_worker_cpu is None
            else worker - self._last_worker_cpu
        )
        d_own = 0.0 if own is None or self._last_own_cpu is None else own - self._last_own_cpu
        advancing = (d_worker is not None and d_worker >= WORKER_CPU_FRAC * window) or (
            d_proc - d_own - (d_worker or 0.0) >= PROCESS_CPU_FRAC * window
        )
        if advancing:
            self._last_cpu_advance = now
        self._last_beat_t = now
        self._last_proc_cpu = proc
        self._last_worker_cpu = worker
        self._last_own_cpu = own
        return now, window, 100.0 * d_proc / window, worker, advancing

    def _classify(self, now: float, advancing: bool) -> WorkerState:
        if self._final is not None:
            return self._final
        since = now - self._last_progress
        if since < self.active_within_s:
            return WorkerState.ACTIVE
        if advancing or since < self.stall_after_s:
            return WorkerState.COMPUTING
        return WorkerState.STALLED

    def classify(self) -> WorkerState:
        """Classify the worker now (advances the CPU window like a beat)."""
        with self._lock:
            now, _w, _pct, _wc, advancing = self._measure()
            return self._classify(now, advancing)

    def beat(self) -> HeartbeatPayload:
        """Measure, classify and publish one HEARTBEAT; return its payload."""
        with self._lock:
            now, window, cpu_pct, worker_cpu, advancing = self._measure()
            state = self._classify(now, advancing)
            since = max(0.0, now - self._last_progress)
            if state is WorkerState.ACTIVE:
                msg = f"progress {since:.1f}s ago"
            elif state is WorkerState.COMPUTING and advancing:
                msg = f"no progress for {since:.1f}s, CPU busy ({cpu_pct:.0f}% of a core)"
            elif state is WorkerState.COMPUTING:
                idle = now - self._last_cpu_advance
                msg = (f"no progress for {since:.1f}s, CPU idle for {idle:.1f}s "
                       f"(stalled after {self.stall_after_s:.0f}s)")
            elif state is WorkerState.STALLED:
                idle = now - self._last_cpu_advance
                msg = f"no progress for {since:.1f}s and no CPU for {idle:.1f}s"
            else:
                msg = state.value.lower()
            budget = self._safe(self._budget_left)
            payload = HeartbeatPayload(
                state=state.value,
                since_progress_s=round(since, 3),
                cpu_pct=round(cpu_pct, 1),
                worker_cpu_s=None if worker_cpu is None else round(worker_cpu, 3),
                rss_mb=round(rss_mb(), 1),
                elapsed_s=round(now - self._t_start, 3),
                budget_left_s=None if budget is None else round(budget, 1),
                interval_s=self.interval_s,
                message=msg,
            )
            self.beats += 1
            try:
                stage = self._stage() or ""
            except Exception:
                stage = ""
        self._publish(payload, stage)
        return payload
