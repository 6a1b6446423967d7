"""The event log: one line per event, filtered by level and kind.

The text of a line comes from :mod:`nx47_pipeline.telemetry.format`, the
formatter of the console too, so a run reads the same in a Kaggle log and in
the dashboard.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterable

from nx47_pipeline.telemetry.events import Event, EventKind, Status
from nx47_pipeline.telemetry.format import event_label, event_text

__all__ = ["LEVELS", "event_level", "LogEntry", "LogState"]

#: Log levels, least severe first.
LEVELS = ("debug", "info", "warning", "error")

_KIND_LEVEL = {
    EventKind.ERROR: "error",
    EventKind.PREFLIGHT_FAIL: "error",
    EventKind.WARNING: "warning",
    EventKind.CANCELLED: "warning",
    EventKind.HEARTBEAT: "debug",
    EventKind.PROGRESS_UPDATE: "debug",
    EventKind.ARRAY_TRACE: "debug",
    EventKind.METRIC: "debug",
}


def event_level(event: Event) -> str:
    """Log level of an event.

    Parameters
    ----------
    event : Event

    Returns
    -------
    str
        One of :data:`LEVELS`: a failed stage or run is an ``error``, a run
        that ended otherwise than ``ok`` or ``failed`` a ``warning``.
    """
    if event.kind is EventKind.STEP and event.payload.status == Status.FAILED:
        return "error"
    if event.kind is EventKind.EXEC_COMPLETE and event.payload.status != Status.OK:
        return "error" if event.payload.status == Status.FAILED else "warning"
    return _KIND_LEVEL.get(event.kind, "info")


@dataclass(frozen=True)
class LogEntry:
    """One line of the log.

    ``kind`` is the event kind's value (what the kind filter matches);
    ``label`` is its short label as the console prints it (default: ``kind``).
    """

    seq: int
    t: float
    level: str
    kind: str
    stage: str
    text: str
    label: str = ""

    def line(self) -> str:
        """The entry as one fixed-column line."""
        return (f"{self.t:8.1f}s {self.level.upper():7s} {self.label or self.kind:15s} "
                f"{self.stage:10s} {self.text}")


class LogState:
    """Bounded event log with level and kind filters.

    Parameters
    ----------
    maxlen : int
        Entries kept (the oldest go first).
    """

    def __init__(self, maxlen: int = 5000) -> None:
        self.entries: collections.deque[LogEntry] = collections.deque(maxlen=maxlen)
        self.min_level = "info"
        self.kinds: set[str] | None = None  # None: all kinds
        self.version = 0

    def apply(self, event: Event) -> bool:
        """Log one event; True when its line passes the filters.

        Parameters
        ----------
        event : Event

        Returns
        -------
        bool
        """
        return self.add(LogEntry(event.seq, event.t, event_level(event), event.kind.value,
                                 str(event.stage), event_text(event), event_label(event)))

    def add(self, entry: LogEntry) -> bool:
        """Append an entry (also one the dashboard writes itself); True if it is visible.

        Parameters
        ----------
        entry : LogEntry

        Returns
        -------
        bool
        """
        self.entries.append(entry)
        if self._visible(entry):
            self.version += 1
            return True
        return False

    def set_filter(self, *, min_level: str | None = None,
                   kinds: Iterable[str] | None | type(...) = ...) -> None:
        """Change the filters.

        Parameters
        ----------
        min_level : str, optional
            Least severe level shown, one of :data:`LEVELS`.
        kinds : iterable of str or None, optional
            Event kind values shown (None: all); left as is when not given.

        Raises
        ------
        ValueError
            For an unknown level.
        """
        if min_level is not None:
            if min_level not in LEVELS:
                raise ValueError(f"min_level must be one of {LEVELS}, got {min_level!r}")
            self.min_level = min_level
        if kinds is not ...:
            self.kinds = None if kinds is None else {str(k) for k in kinds}
        self.version += 1

    def _visible(self, e: LogEntry) -> bool:
        return (LEVELS.index(e.level) >= LEVELS.index(self.min_level)
                and (self.kinds is None or e.kind in self.kinds))

    def visible(self, limit: int = 200) -> list[LogEntry]:
        """The last ``limit`` entries passing the filters, oldest first.

        Parameters
        ----------
        limit : int
            Most entries returned.

        Returns
        -------
        list of LogEntry
        """
        out: list[LogEntry] = []
        for e in reversed(self.entries):
            if self._visible(e):
                out.append(e)
                if len(out) >= limit:
                    break
        return out[::-1]
