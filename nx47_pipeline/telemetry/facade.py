"""Telemetry facade: the one object the orchestrator talks to.

It owns the :class:`~nx47_pipeline.bus.EventBus` and its sinks (journal,
console, any extra sink such as the dashboard's
:class:`~nx47_pipeline.bus.QueueSink`; with the event shortcuts, from
:class:`~nx47_pipeline.telemetry.publisher.EventPublisher`), the
:class:`~nx47_pipeline.plan.PlanTracker`, the
:class:`~nx47_pipeline.heartbeat.HeartbeatMonitor` and the
:class:`~nx47_pipeline.cancel.CancelToken`.  Typical use::

    tel = Telemetry(out_dir=out, stages=[("features", 5.0), ("fit", 2.0)])
    tel.start(run_id="r1")
    with tel.stage("features", total=len(ids)):
        for i, vid in enumerate(ids):
            ...
            tel.progress(step_done=i + 1, file=vid)   # may raise Cancelled
    tel.finish("ok", submission="submission.zip", stats={...})
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from nx47_pipeline.io.run_folder import JOURNAL, RunFolder
from nx47_pipeline.telemetry.bus import Sink
from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.telemetry.events import (
    ConfigPayload,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    RunStartPayload,
    Status,
    StepPayload,
    WorkerState,
)
from nx47_pipeline.telemetry.heartbeat import HeartbeatMonitor
from nx47_pipeline.telemetry.journal import JournalSink, open_journal
from nx47_pipeline.telemetry.plan import PlanSnapshots, PlanTracker
from nx47_pipeline.telemetry.progress import ProgressThrottle, progress_payload
from nx47_pipeline.telemetry.publisher import EventPublisher

__all__ = ["Telemetry"]


#: Worker state of the last heartbeat, by run status (any other: failed).
_FINAL_STATE = {Status.OK: WorkerState.FINISHED, Status.CANCELLED: WorkerState.CANCELLED}


class Telemetry(EventPublisher):
    """Facade over bus, sinks, plan, heartbeat and cancellation.

    The bus, its console and extra sinks and the event shortcuts
    (:meth:`emit`, :meth:`metric`, :meth:`warning`, :meth:`error`,
    :meth:`budget`, :meth:`trace`) are :class:`EventPublisher`'s.

    Parameters
    ----------
    out_dir : str or path, optional
        Run folder: ``journal.jsonl`` and ``plan.json`` go there.  None: no
        journal (console and extra sinks only).
    stages : sequence of (name, weight)
        The plan (see :class:`PlanTracker`).
    config_dict : dict, optional
        Published as the CONFIG event.  ``array_trace: False`` turns
        :meth:`trace` off.
    console, console_stream, console_interval_s
        The :class:`ConsoleSink` (on by default, stdout, 5 s throttle).
    heartbeat_interval_s, stall_after_s, progress_max_gap_s
        The :class:`HeartbeatMonitor` settings (ACTIVE while the last
        progress is younger than ``progress_max_gap_s``).
    extra_sinks : sequence of Sink
        Attached after the journal and console (e.g. a dashboard QueueSink).
    enabled : bool
        False: no journal, console, queue or heartbeat (:meth:`progress` only checks cancellation).
    budget_s : float, optional
        Wall-clock budget of the run (``budget_left_s``, heartbeats).
    cancel, clock, mono
        Shared token (a new one by default); wall and monotonic clocks.
    progress_interval_s : float
        Minimum seconds between two PROGRESS_UPDATE events of a stage (0:
        every report); a report in between only updates the plan and the
        heartbeat and checks cancellation.  The first report of a stage, one
        that completes its counter or changes file or sub-step is published.
    snapshot_interval_s : float
        Minimum seconds between two ``plan.json`` rewrites on progress (not
        at stage begin / end).
    journal_fsync : bool
        ``fsync`` every journal line.
    """

    def __init__(
        self,
        *,
        out_dir: str | os.PathLike | None,
        stages: Sequence[tuple[str, float]],
        config_dict: dict | None = None,
        console: bool = True,
        console_stream=None,
        console_interval_s: float = 5.0,
        heartbeat_interval_s: float = 15.0,
        stall_after_s: float | None = None,
        progress_max_gap_s: float = 5.0,
        extra_sinks: Sequence[Sink] = (),
        enabled: bool = True,
        budget_s: float | None = None,
        cancel: CancelToken | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        progress_interval_s: float = 0.25,
        snapshot_interval_s: float = 5.0,
        journal_fsync: bool = False,
    ) -> None:
        self.config_dict = dict(config_dict or {})
        super().__init__(enabled=enabled, console=console, console_stream=console_stream,
                         console_interval_s=console_interval_s, extra_sinks=extra_sinks,
                         trace=self.config_dict.get("array_trace", True), clock=clock)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.budget_s = None if budget_s is None else float(budget_s)
        self.cancel = cancel if cancel is not None else CancelToken()
        self._clock = clock
        self._mono = mono
        self._mono_t0 = mono()
        self.progress_interval_s = float(progress_interval_s)
        self._journal_fsync = bool(journal_fsync)
        self._heartbeat_interval_s = float(heartbeat_interval_s)
        self._stall_after_s = stall_after_s
        self.progress_max_gap_s = float(progress_max_gap_s)
        self.plan = PlanTracker(stages, clock=mono)
        self._snapshots = None if out_dir is None else PlanSnapshots(
            self.plan, RunFolder(self.out_dir).plan, interval_s=snapshot_interval_s, mono=mono, clock=clock)
        self.journal: JournalSink | None = None
        self.heartbeat: HeartbeatMonitor | None = None
        self.resumed = False
        self.run_id = ""
        self._throttle = ProgressThrottle(self.progress_interval_s)
        self._started = False
        self._finished = False

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    def start(self, *, run_id: str) -> None:
        """Open the journal (continuing its chain), publish RUN_START and
        CONFIG, and start the heartbeat with the calling thread as worker."""
        if self._started:
            raise RuntimeError("Telemetry.start() was already called")
        self._started = True
        self.run_id = str(run_id)
        if not self.enabled:
            return
        problems: list[tuple[str, str]] = []
        open_error = ""
        if self.out_dir is not None:
            self.journal, problems, open_error = open_journal(RunFolder(self.out_dir).journal,
                                                              fsync=self._journal_fsync)
        if self.journal is not None:
            self.resumed = self.journal.last_seq >= 0
            self.bus.set_next_seq(self.journal.last_seq + 1)
            self.bus.attach(self.journal, first=True)  # what a live view shows is already on disk
        self.bus.publish(
            EventKind.RUN_START,
            RunStartPayload(
                run_id=self.run_id,
                out_dir="" if self.out_dir is None else str(self.out_dir),
                pid=os.getpid(),
                host=socket.gethostname(),
                resumed=self.resumed,
            ),
        )
        self.bus.publish(EventKind.CONFIG, ConfigPayload(config=self.config_dict))
        for code, msg in problems:
            self.warning(msg, subject=JOURNAL, code=code)
        if open_error:
            self.error(open_error, subject=JOURNAL, code="journal_open_failed")
        self.heartbeat = HeartbeatMonitor(
            self._publish_heartbeat,
            interval_s=self._heartbeat_interval_s,
            stall_after_s=self._stall_after_s,
            active_within_s=self.progress_max_gap_s,
            clock=self._mono,
            budget_left=self.budget_left_s,
            stage=lambda: self.current_stage,
        )
        self.heartbeat.start()
        self._write_snapshot(force=True)

    def _publish_heartbeat(self, payload, stage: str) -> None:
        self.bus.publish(EventKind.HEARTBEAT, payload, stage=stage)

    def finish(
        self, status: str, *, submission: str | None = None, stats: dict | None = None
    ) -> None:
        """End the run: GLOBAL_STATS (if ``stats``), a final heartbeat,
        EXEC_COMPLETE (carrying the journal head before it), the plan
        snapshot, and close every sink.  Idempotent."""
        if self._finished:
            return
        self._finished = True
        if not self.enabled:
            return
        if stats is not None:
            self.bus.publish(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats=dict(stats)))
        final = _FINAL_STATE.get(status, WorkerState.FAILED)
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.set_final(final)
            self.heartbeat.beat()
        self._write_snapshot(force=True)
        self.bus.publish(
            EventKind.EXEC_COMPLETE,
            ExecCompletePayload(
                status=status,
                submission=submission,
                duration_s=round(self.elapsed_s(), 3),
                journal_head=None if self.journal is None else self.journal.head,
            ),
        )
        self.bus.close()

    # ------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------
    def _ensure_planned(self, name: str) -> None:
        if name not in self.plan:
            self.plan.add_stage(name, 0.0)
            self.warning(
                f"stage {name!r} is not in the plan {self.plan.stage_names[:-1]!r}; "
                "added with weight 0",
                subject=name,
                code="unplanned_stage",
            )

    def _step(self, name: str, phase: str, status: Status | str = Status.OK,
              duration: float | None = None, message: str = "") -> None:
        duration_s = None if duration is None else round(duration, 3)
        self.bus.publish(EventKind.STEP, StepPayload(phase=phase, status=status, duration_s=duration_s,
                                                     index=self.plan.index_of(name), count=len(self.plan),
                                                     message=message), stage=name)

    @contextlib.contextmanager
    def stage(self, name: str, *, total: float = 1.0, message: str = "") -> Iterator["Telemetry"]:
        """Context manager around one stage (STEP begin / end, plan, snapshot).

        A :class:`Cancelled` (or KeyboardInterrupt) ends the stage with
        status ``cancelled``; any other exception publishes an ERROR and ends
        it ``failed``.  Exceptions are re-raised.
        """
        name = str(name)
        self._ensure_planned(name)
        t0 = self._mono()
        self._stack.push(name)
        self.plan.start(name, total)
        self._throttle.begin(name, t0)
        if self.enabled:
            self._step(name, "begin", message=message)
            self._write_snapshot(force=True)
        if self.heartbeat is not None:
            self.heartbeat.notify_progress()
        status = Status.OK
        end_msg = ""
        try:
            yield self
        except BaseException as exc:  # CANCELLED or ERROR published, re-raised
            status, end_msg = self._stage_raised(name, exc)
            raise
        finally:
            self.plan.finish(name, status)
            self._stack.pop(name)
            if self.enabled:
                self._step(name, "end", status, self._mono() - t0, end_msg)
                self._write_snapshot(force=True)
            if self.heartbeat is not None:
                self.heartbeat.notify_progress()

    def skip_stage(self, name: str, reason: str) -> None:
        """Mark stage ``name`` skipped: STEP begin + end with status ``skipped``."""
        name = str(name)
        self._ensure_planned(name)
        self.plan.skip(name, reason)
        if self.enabled:
            self._step(name, "begin", message=reason)
            self._step(name, "end", Status.SKIPPED, 0.0, reason)
            self._write_snapshot(force=True)

    # ------------------------------------------------------------------
    # progress
    # ------------------------------------------------------------------
    def progress(
        self,
        *,
        step_done: float | None = None,
        step_total: float | None = None,
        substep: str = "",
        substep_done: int = 0,
        substep_total: int = 0,
        file: str = "",
        file_done: int = 0,
        file_total: int = 0,
        message: str = "",
        worker: str = "",
    ) -> None:
        """Report progress of the current stage; then check cancellation.

        Raises
        ------
        Cancelled
            If cancellation was requested.
        """
        if not self.enabled:
            self.cancel.raise_if_cancelled()
            return
        name = self.current_stage
        now = self._mono()
        if self.heartbeat is not None:
            self.heartbeat.notify_progress()
        payload = progress_payload(
            self.plan, self._throttle, name, now, step_done=step_done, step_total=step_total, substep=substep,
            substep_done=substep_done, substep_total=substep_total, file=file, file_done=file_done,
            file_total=file_total, message=message, worker=worker)
        if payload is not None:
            self.bus.publish(EventKind.PROGRESS_UPDATE, payload, stage=name)
            self._write_snapshot()
        self.cancel.raise_if_cancelled()

    def _write_snapshot(self, *, force: bool = False) -> None:
        """Rewrite ``plan.json`` (when due, or ``force``); a first failure is a WARNING."""
        if self._snapshots is not None and self.enabled:
            problem = self._snapshots.write(self.run_id, force=force)
            if problem is not None:
                self.bus.publish(EventKind.WARNING, problem, stage=self.current_stage)

    # ------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds since this Telemetry was created."""
        return self._mono() - self._mono_t0

    def budget_left_s(self) -> float | None:
        """``budget_s - elapsed_s()`` (None without a budget)."""
        if self.budget_s is None:
            return None
        return self.budget_s - self.elapsed_s()
