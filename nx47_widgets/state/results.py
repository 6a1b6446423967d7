"""The run's results: status, submission, GLOBAL_STATS and journal verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nx47_pipeline.telemetry.events import Event, EventKind, Status
from nx47_pipeline.telemetry.journal import verify_journal

from nx47_widgets.state.outcome import Verdict, classify
from nx47_widgets.state.preview import INFER_COMMAND

__all__ = ["ResultsState"]


class ResultsState:
    """Submission path, GLOBAL_STATS, journal verification and the verdict of a run.

    Attributes
    ----------
    killed, lost : str or None
        Why the run ended without a final event (its process killed, or gone).
    command : str
        ``"run"``, or ``"infer"`` for an ``nx47 infer`` run (its
        ``submission`` is ``mask.zarr``).
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.status: Status | None = None
        self.submission: str | None = None
        self.duration_s: float | None = None
        self.journal_head: str | None = None
        self.stats: dict[str, Any] = {}
        self.verification: Any = None
        self.out_dir: str | None = None
        self.killed: str | None = None
        self.lost: str | None = None
        self.command = "run"  # "infer": an nx47 infer run, whose result is mask.zarr
        self.version = getattr(self, "version", 0) + 1

    def apply(self, event: Event) -> bool:
        """Apply one event; True for RUN_START, GLOBAL_STATS, EXEC_COMPLETE and
        the CONFIG of an infer run.

        Parameters
        ----------
        event : Event

        Returns
        -------
        bool
        """
        p = event.payload
        if event.kind is EventKind.RUN_START:
            self._clear()
            self.out_dir = p.out_dir
        elif event.kind is EventKind.CONFIG and p.config.get("command") == INFER_COMMAND:
            self.command = INFER_COMMAND
        elif event.kind is EventKind.GLOBAL_STATS:
            self.stats = dict(p.stats)
        elif event.kind is EventKind.EXEC_COMPLETE:
            self.status = p.status
            self.submission = p.submission
            self.duration_s = p.duration_s
            self.journal_head = p.journal_head
        else:
            return False
        self.version += 1
        return True

    @property
    def verdict(self) -> Verdict:
        """How the run ended (or that it runs), in words."""
        return classify(self.status, self.stats, killed=self.killed, lost=self.lost)

    @property
    def ended(self) -> bool:
        """True once the run ended, with or without a final event."""
        return self.status is not None or bool(self.killed or self.lost)

    def end_without_event(self, *, killed: str | None = None, lost: str | None = None) -> None:
        """The run's process is gone without EXEC_COMPLETE: killed, or lost.

        Parameters
        ----------
        killed : str, optional
            Why it was killed.
        lost : str, optional
            Why it counts as lost.
        """
        if self.status is not None:
            return
        self.killed, self.lost = killed, (None if killed else lost)
        self.version += 1

    def verify(self, journal_path: str | Path) -> Any:
        """Verify the run's journal and keep the result.

        Parameters
        ----------
        journal_path : str or Path
            The run's ``journal.jsonl``.

        Returns
        -------
        Verification
            From :func:`nx47_pipeline.telemetry.journal.verify_journal`.
        """
        self.verification = verify_journal(journal_path)
        self.version += 1
        return self.verification
