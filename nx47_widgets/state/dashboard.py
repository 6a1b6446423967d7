"""Every reducer of one dashboard, and whether the run it shows has ended."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.telemetry.events import Event, EventKind
from nx47_pipeline.telemetry.format import clean

from nx47_widgets.state.charts import ChartState
from nx47_widgets.state.cluster import ClusterState
from nx47_widgets.state.heartbeat import KILLED, HeartbeatState
from nx47_widgets.state.log import LogEntry, LogState
from nx47_widgets.state.preview import PreviewState
from nx47_widgets.state.progress import ProgressState
from nx47_widgets.state.results import ResultsState
from nx47_widgets.state.topo import ValidationScores

__all__ = ["DashboardState"]


class DashboardState:
    """All reducers of one dashboard; :meth:`apply` routes an event to each.

    Parameters
    ----------
    out_dir : str or Path, optional
        The run folder (for the previewer's relative paths, the journal and
        ``cluster.json``).
    clock : callable
        Wall clock of the heartbeat light and of the cluster file's age.
    folder : str or Path, optional
        The run folder the page shows (None: no run shown yet); the header names it.

    Attributes
    ----------
    ended : bool
        True once the EXEC_COMPLETE of the latest run was applied (a resumed
        run's journal holds older runs first: their end does not count).
    """

    PARTS = ("progress", "heartbeat", "preview", "log", "charts", "results", "cluster", "scores")

    def __init__(self, *, out_dir: str | Path | None = None,
                 clock: Callable[[], float] = time.time,
                 folder: str | Path | None = None) -> None:
        self.folder = folder
        self.progress = ProgressState()
        self.heartbeat = HeartbeatState(clock=clock)
        self.preview = PreviewState(out_dir)
        self.log = LogState()
        self.charts = ChartState()
        self.results = ResultsState()
        self.cluster = ClusterState(out_dir, clock=clock)
        self.scores = ValidationScores(out_dir)
        self.n_events = 0
        self.last_seq = -1
        self.run_id: str | None = None
        self.ended = False
        self.verified_journal: str | None = None

    def apply(self, event: Event) -> set[str]:
        """Apply one event.

        Parameters
        ----------
        event : Event

        Returns
        -------
        set of str
            The names (:attr:`PARTS`) of the parts that changed.
        """
        self.n_events += 1
        self.last_seq = event.seq
        if event.kind is EventKind.RUN_START:
            self.run_id = event.payload.run_id
            self.ended = False
            self.verified_journal = None
        elif event.kind is EventKind.EXEC_COMPLETE:
            self.ended = True
        changed = set()
        for name in self.PARTS:
            if getattr(self, name).apply(event):
                changed.add(name)
        return changed

    def apply_many(self, events: Iterable[Event]) -> set[str]:
        """Apply events in order; the union of the parts that changed.

        Parameters
        ----------
        events : iterable of Event

        Returns
        -------
        set of str
        """
        changed: set[str] = set()
        for ev in events:
            changed |= self.apply(ev)
        return changed

    def end_without_event(self, light: str, reason: str) -> None:
        """The run's process is gone without EXEC_COMPLETE: killed or lost.

        Parameters
        ----------
        light : str
            :data:`~nx47_widgets.state.heartbeat.KILLED` or
            :data:`~nx47_widgets.state.heartbeat.LOST`.
        reason : str
            Shown in the status, the results and under the light.
        """
        if self.ended:
            return
        self.ended = True
        if light == KILLED:
            self.results.end_without_event(killed=reason)
        else:
            self.results.end_without_event(lost=reason)
        self.heartbeat.end_without_event(light, reason)
        self.log.add(LogEntry(-1, 0.0, "error", "LOST" if light != KILLED else "KILLED",
                              "dashboard", f"run {light.lower()}: {reason}"))

    def versions(self) -> dict[str, int]:
        """Version counter of each part."""
        return {name: getattr(self, name).version for name in self.PARTS}

    @property
    def version(self) -> int:
        """Increases whenever any part changes (the sum of their versions)."""
        return sum(getattr(self, name).version for name in self.PARTS)

    def verify_journal_once(self, out_dir: str | Path) -> bool:
        """Verify the run's journal unless it was verified already.

        A failed verification is shown in the results; an unreadable journal
        adds an error line to the log.

        Parameters
        ----------
        out_dir : str or Path
            The run folder when no RUN_START said where the run writes.

        Returns
        -------
        bool
            True when a verification was attempted now.
        """
        journal = RunFolder(self.results.out_dir or out_dir).journal
        if self.verified_journal == str(journal) or not journal.exists():
            return False
        self.verified_journal = str(journal)
        try:
            self.results.verify(journal)
        except Exception as exc:
            self.log.add(LogEntry(-1, 0.0, "error", "VERIFY", "dashboard",
                                  f"journal verification: {clean(exc)}"))
        return True
