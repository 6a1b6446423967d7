"""Console sink: one flushed, human-readable line per meaningful event.

Made for logs that are read later (a Kaggle commit run's log): no carriage
return redraws, and a progress storm is throttled to at most one
PROGRESS_UPDATE line per ``min_interval_s`` per stage (plus the first one of
a stage, and the last one, which is printed before the stage's end line if
it was held back).  STEP, HEARTBEAT, WARNING, ERROR, BUDGET, PREFLIGHT_*,
COVERAGE_AUDIT, CANCELLED, GLOBAL_STATS and EXEC_COMPLETE always print;
METRIC is throttled like progress (per stage and metric name); ARRAY_TRACE
prints a one-line summary, throttled like progress, noting how many traces
were not shown; PREVIEW prints a short line.

Example::

    [  12.3s] features   PROGRESS  42.0% | step 3/12 vol 123456 | sub 4/9 hessian | 0.8/s | eta 3m12s
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from nx47_pipeline.telemetry.events import Event, EventKind, StepPhase
from nx47_pipeline.telemetry.format import clean, event_label, event_text

__all__ = ["ConsoleSink", "format_event"]


def format_event(event: Event) -> str:
    """The console line for ``event`` (without throttling)."""
    body = f"{event_label(event)} {event_text(event)}"
    return f"[{event.t:7.1f}s] {event.stage or '-':<10} {clean(body)}"


_THROTTLED = (EventKind.PROGRESS_UPDATE, EventKind.METRIC, EventKind.ARRAY_TRACE)


class ConsoleSink:
    """Throttled, line-per-event console output (see module docstring).

    Parameters
    ----------
    stream : text stream, optional
        Where to write (default: ``sys.stdout`` looked up at each write, so
        notebook / papermill capture works).
    min_interval_s : float
        Minimum seconds between two throttled lines of the same key.
    clock : callable
        Monotonic clock (injectable for tests).
    """

    name = "console"

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s!r}")
        self._stream = stream
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple, float] = {}
        self._held: dict[tuple, Event] = {}  # latest suppressed event per key
        self._suppressed: dict[tuple, int] = {}
        self.lines = 0

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()
        self.lines += 1

    @staticmethod
    def _key(event: Event) -> tuple:
        if event.kind is EventKind.METRIC:
            return (event.kind, event.stage, event.payload.name)
        return (event.kind, event.stage)

    def handle(self, event: Event) -> None:
        with self._lock:
            if event.kind in _THROTTLED:
                self._throttled(event)
                return
            if event.kind is EventKind.STEP and event.payload.phase is StepPhase.END:
                # the last progress of the stage, if it was held back
                self._flush_held(event.stage)
            self._write(format_event(event))

    def _throttled(self, event: Event) -> None:
        key = self._key(event)
        now = self._clock()
        last = self._last.get(key)
        final = False
        if event.kind is EventKind.PROGRESS_UPDATE:
            p = event.payload
            final = p.step_total > 0 and p.step_done >= p.step_total
        if last is None or now - last >= self.min_interval_s or final:
            n = self._suppressed.pop(key, 0)
            self._held.pop(key, None)
            line = format_event(event)
            if n and event.kind is EventKind.ARRAY_TRACE:
                line += f" (+{n} traces not shown)"
            self._write(line)
            self._last[key] = now
        else:
            self._held[key] = event
            self._suppressed[key] = self._suppressed.get(key, 0) + 1

    def _flush_held(self, stage: str) -> None:
        key = (EventKind.PROGRESS_UPDATE, stage)
        ev = self._held.pop(key, None)
        self._suppressed.pop(key, None)
        if ev is not None:
            self._write(format_event(ev))
        # forget throttle state of the stage so a rerun of it prints its first line
        for k in [k for k in self._last if k[1] == stage]:
            del self._last[k]

    def close(self) -> None:
        with self._lock:
            try:
                stream = self._stream if self._stream is not None else sys.stdout
                stream.flush()
            except Exception:
                pass
