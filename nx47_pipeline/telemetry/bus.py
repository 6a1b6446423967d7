"""Event bus: thread-safe publishing to attached sinks, and the queue sink.

Any thread may call :meth:`EventBus.publish`.  The bus assigns ``seq`` (a
per-run counter), ``ts`` (wall clock) and ``t`` (seconds since the run
started) under one lock and hands the event to every attached sink while it
still holds that lock, so every sink sees events in ``seq`` order, exactly
once.  A sink that raises is detached and reported by an ERROR event
(``code="sink_failed"``) delivered to the remaining sinks; ``publish`` never
raises because of a sink.

:class:`QueueSink` is the bounded, never-blocking hand-off to the dashboard
(see ``docs/event-protocol.md`` for its delivery guarantees).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Protocol, runtime_checkable

from nx47_pipeline.telemetry.events import COALESCIBLE, MUST_DELIVER, Event, EventKind, MessagePayload, Payload

__all__ = ["Sink", "EventBus", "QueueSink", "sink_name"]


@runtime_checkable
class Sink(Protocol):
    """Anything that receives events: ``handle`` each one, ``close`` once."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


def sink_name(sink: object) -> str:
    """A short human name for ``sink`` (its ``name`` attribute or class name)."""
    name = getattr(sink, "name", None)
    if isinstance(name, str) and name:
        return name
    return type(sink).__name__


class EventBus:
    """Thread-safe publisher that delivers events to sinks in ``seq`` order.

    Parameters
    ----------
    clock : callable, optional
        Wall clock giving ``ts`` (UNIX seconds); injectable for tests.
    t0 : float, optional
        Wall time of the run start; ``t = ts - t0``.  Defaults to
        ``clock()`` at construction.
    seq_start : int, optional
        First sequence number (a resumed run continues its journal's ``seq``).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        t0: float | None = None,
        seq_start: int = 0,
    ) -> None:
        if seq_start < 0:
            raise ValueError(f"seq_start must be >= 0, got {seq_start!r}")
        self._clock = clock
        self.t0 = float(clock() if t0 is None else t0)
        self._seq = int(seq_start)
        self._lock = threading.RLock()
        self._sinks: list[Sink] = []
        self._failed: list[tuple[str, str]] = []
        self._closed = False

    # ------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The ``seq`` the next published event will get."""
        return self._seq

    def set_next_seq(self, seq: int) -> None:
        """Continue numbering at ``seq`` (never moves backwards)."""
        with self._lock:
            self._seq = max(self._seq, int(seq))

    @property
    def sinks(self) -> list[Sink]:
        """The sinks attached now (a copy)."""
        with self._lock:
            return list(self._sinks)

    @property
    def failed_sinks(self) -> list[tuple[str, str]]:
        """``(sink name, error)`` for every sink detached because it raised."""
        with self._lock:
            return list(self._failed)

    @property
    def closed(self) -> bool:
        return self._closed

    def attach(self, sink: Sink, *, first: bool = False) -> None:
        """Deliver every later event to ``sink`` (attaching twice is a no-op);
        ``first``: before the sinks already attached."""
        if not callable(getattr(sink, "handle", None)):
            raise TypeError(f"sink must have a handle(event) method, got {sink!r}")
        with self._lock:
            if not any(s is sink for s in self._sinks):
                self._sinks.insert(0 if first else len(self._sinks), sink)

    def detach(self, sink: Sink) -> None:
        """Stop delivering to ``sink`` (does not close it)."""
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    # ------------------------------------------------------------------
    def publish(self, kind: EventKind, payload: Payload, *, stage: str = "") -> Event:
        """Stamp and deliver one event; return it.

        Raises
        ------
        TypeError
            If ``payload`` is not the payload type of ``kind`` (a programming
            error, not a sink failure).
        """
        kind = EventKind(kind)
        with self._lock:
            ts = self._clock()
            event = Event(
                seq=self._seq, ts=ts, t=ts - self.t0, kind=kind, stage=stage, payload=payload
            )
            self._seq += 1
            self._deliver(event)
            return event

    def _deliver(self, event: Event) -> None:
        # Called with the lock held.  Failures are collected first and
        # reported after the loop so that each report also gets a seq.
        failures: list[tuple[Sink, BaseException]] = []
        for sink in list(self._sinks):
            try:
                sink.handle(event)
            except Exception as exc:  # a sink must never kill the pipeline
                failures.append((sink, exc))
        for sink, exc in failures:
            name = sink_name(sink)
            self._sinks = [s for s in self._sinks if s is not sink]
            self._failed.append((name, f"{type(exc).__name__}: {exc}"))
            try:
                sink.close()
            except Exception:
                pass
            ts = self._clock()
            report = Event(
                seq=self._seq,
                ts=ts,
                t=ts - self.t0,
                kind=EventKind.ERROR,
                stage=event.stage,
                payload=MessagePayload(
                    message=f"telemetry sink {name} failed and was detached: "
                    f"{type(exc).__name__}: {exc}",
                    subject=name,
                    code="sink_failed",
                    extra={"event_seq": event.seq, "event_kind": event.kind.value},
                ),
            )
            self._seq += 1
            self._deliver(report)

    def close(self) -> None:
        """Close every attached sink once and detach them (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                self._failed.append((sink_name(sink), f"close: {type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------
class QueueSink:
    """Bounded, never-blocking event queue for the dashboard.

    Guarantees (see ``docs/event-protocol.md``):

    * ``handle`` never blocks and never raises for a full queue.
    * Events come out in ``seq`` order.
    * Must-deliver kinds (:data:`~nx47_pipeline.events.MUST_DELIVER`: RUN_START,
      CONFIG, STEP, WARNING, ERROR, PREFLIGHT_*, BUDGET, COVERAGE_AUDIT,
      CANCELLED, GLOBAL_STATS, EXEC_COMPLETE) are never dropped; when the queue
      is full of them it grows past ``maxsize``.
    * Coalescing kinds: at most one pending PROGRESS_UPDATE per ``stage`` and
      one pending HEARTBEAT; a newer one replaces the pending one (latest
      wins) and takes its place at the end of the queue.
    * Other kinds (METRIC, PREVIEW, ARRAY_TRACE) are dropped only when the
      queue is full, oldest first.

    ``dropped`` counts events coalesced away or dropped.
    """

    name = "queue"

    def __init__(self, maxsize: int = 2000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        self.maxsize = int(maxsize)
        self._lock = threading.Lock()
        self._cells: collections.deque[list] = collections.deque()  # [event|None]
        self._droppable: collections.deque[list] = collections.deque()
        self._pending: dict[tuple, list] = {}  # coalescing key -> cell
        self._live = 0
        self._dropped = 0
        self._dropped_by_kind: collections.Counter[str] = collections.Counter()
        self._closed = False

    @staticmethod
    def _key(event: Event) -> tuple | None:
        if event.kind is EventKind.PROGRESS_UPDATE:
            return (EventKind.PROGRESS_UPDATE, event.stage)
        if event.kind in COALESCIBLE:
            return (event.kind,)
        return None

    def _kill(self, cell: list) -> None:
        ev = cell[0]
        if ev is not None:
            cell[0] = None
            self._live -= 1
            self._dropped += 1
            self._dropped_by_kind[ev.kind.value] += 1

    def handle(self, event: Event) -> None:
        kind = event.kind
        with self._lock:
            cell = [event]
            if kind in MUST_DELIVER:
                if self._live >= self.maxsize:
                    self._drop_oldest_droppable()
            else:
                key = self._key(event)
                if key is not None:
                    old = self._pending.get(key)
                    if old is not None:
                        self._kill(old)
                    self._pending[key] = cell
                else:
                    if self._live >= self.maxsize and not self._drop_oldest_droppable():
                        # Full of events that must not or need not be dropped:
                        # the new droppable event is the one to go.
                        self._dropped += 1
                        self._dropped_by_kind[kind.value] += 1
                        return
                    self._droppable.append(cell)
            self._cells.append(cell)
            self._live += 1
            if len(self._cells) > 2 * self._live + 64:
                self._compact()

    def _drop_oldest_droppable(self) -> bool:
        while self._droppable:
            cell = self._droppable.popleft()
            if cell[0] is not None:
                self._kill(cell)
                return True
        return False

    def _compact(self) -> None:
        self._cells = collections.deque(c for c in self._cells if c[0] is not None)
        self._droppable = collections.deque(c for c in self._droppable if c[0] is not None)

    def _pop(self) -> Event | None:
        while self._cells:
            cell = self._cells.popleft()
            ev = cell[0]
            if ev is None:
                continue
            cell[0] = None
            self._live -= 1
            key = self._key(ev)
            if key is not None and self._pending.get(key) is cell:
                del self._pending[key]
            if not self._cells:
                self._droppable.clear()
            return ev
        self._droppable.clear()
        return None

    def get_nowait(self) -> Event | None:
        """The oldest pending event, or None if the queue is empty."""
        with self._lock:
            return self._pop()

    def drain(self, max_items: int | None = None) -> list[Event]:
        """Remove and return up to ``max_items`` pending events (all if None)."""
        if max_items is not None and max_items < 0:
            raise ValueError(f"max_items must be >= 0 or None, got {max_items!r}")
        out: list[Event] = []
        with self._lock:
            while max_items is None or len(out) < max_items:
                ev = self._pop()
                if ev is None:
                    break
                out.append(ev)
        return out

    def qsize(self) -> int:
        """Number of pending events."""
        with self._lock:
            return self._live

    @property
    def dropped(self) -> int:
        """Events coalesced away or dropped so far."""
        return self._dropped

    @property
    def dropped_by_kind(self) -> dict[str, int]:
        """``dropped`` broken down by event kind."""
        with self._lock:
            return dict(self._dropped_by_kind)

    @property
    def closed(self) -> bool:
        """True once the bus closed this sink (no more events will come)."""
        return self._closed

    def close(self) -> None:
        self._closed = True
