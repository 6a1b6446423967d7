"""The dashboard's single consumer of a run's events.

:class:`UIPump` drains a source at most every ``interval`` seconds and hands
the batch to one ``flush`` call, so widget syncs stay bounded (about
``1 / interval`` per second) whatever the event rate.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

from nx47_pipeline.telemetry.events import Event

__all__ = ["UIPump"]


class UIPump:
    """Drain events at a bounded rate and apply them in one flush.

    Parameters
    ----------
    source : callable
        ``source() -> list[Event]`` (e.g. ``runner.drain``); may be swapped
        with :meth:`set_source`.
    flush : callable
        ``flush(events, tick)`` applies a batch to the state and the widgets;
        ``tick`` is True when ``tick_s`` has passed since the last tick (for
        displays that change with time alone, like "seconds since the last
        beat").  Called at most once per ``interval``.
    interval : float
        Minimum seconds between flushes (0.1: at most ~10 syncs per second).
    tick_s : float
        Period of the time-only refresh.

    Attributes
    ----------
    flushes : int
        Number of flush calls so far.
    events : int
        Number of events handed to flush so far.
    """

    def __init__(self, source: Callable[[], list[Event]] | None,
                 flush: Callable[[list[Event], bool], None], *, interval: float = 0.1,
                 tick_s: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._source = source
        self._flush = flush
        self.interval = float(interval)
        self.tick_s = float(tick_s)
        self.flushes = 0
        self.events = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_tick = 0.0

    def set_source(self, source: Callable[[], list[Event]] | None) -> None:
        with self._lock:
            self._source = source

    def start(self) -> "UIPump":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="nx47-ui-pump", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pump_once(self) -> bool:
        """Drain and flush once (if there are events or a tick is due); True if flushed."""
        with self._lock:
            source = self._source
        events = source() if source is not None else []
        now = time.monotonic()
        tick = now - self._last_tick >= self.tick_s
        if not events and not tick:
            return False
        if tick:
            self._last_tick = now
        self.flushes += 1
        self.events += len(events)
        self._flush(events, tick)
        return True

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.pump_once()
            except Exception:  # a view bug must not kill live updates
                self.errors.append(traceback.format_exc())
                if len(self.errors) > 20:
                    del self.errors[:-20]
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))
