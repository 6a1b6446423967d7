"""Telemetry facade: the one object the orchestrator talks to.

It owns the :class:`~nx47_pipeline.bus.EventBus` and its sinks (journal,
console, any extra sink such as the dashboard's
:class:`~nx47_pipeline.bus.QueueSink`), the
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
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.run_folder import JOURNAL, PLAN, RunFolder
from nx47_pipeline.telemetry.bus import EventBus, Sink
from nx47_pipeline.telemetry.cancel import CancelToken, Cancelled
from nx47_pipeline.telemetry.console import ConsoleSink
from nx47_pipeline.telemetry.events import (
    ArrayTracePayload,
    BudgetPayload,
    ConfigPayload,
    Event,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    MessagePayload,
    MetricPayload,
    Payload,
    ProgressPayload,
    RunStartPayload,
    Status,
    StepPayload,
    WorkerState,
)
from nx47_pipeline.telemetry.heartbeat import HeartbeatMonitor
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_pipeline.telemetry.progress import ProgressThrottle, StageStack
from nx47_pipeline.telemetry.plan import PlanTracker
from nx47_pipeline.telemetry.trace import array_trace

__all__ = ["Telemetry"]


_BUDGET_FIELDS = {"budget_s", "projected_s", "fits", "max_train_fit", "max_val_fit", "deadline_s"}


def open_journal(path: Path, *, fsync: bool) -> tuple[JournalSink | None, list[tuple[str, str]], str]:
    """Open (continue) the journal at ``path``.

    Returns
    -------
    (journal or None, [(code, message) of repairs to report], error text when it could not open)
    """
    try:
        journal = JournalSink(path, fsync=fsync)
    except OSError as exc:  # the run goes on without a journal
        return None, [], f"cannot open the journal {path}: {exc}"
    problems = []
    if journal.torn_recovered:
        problems.append((
            "journal_torn_tail",
            f"the journal's last line was torn by an earlier crash; it was kept in "
            f"{journal.torn_copy} and the chain continues",
        ))
    if journal.quarantined is not None:
        problems.append((
            "journal_bad_chain",
            f"the existing journal failed verification and was moved to "
            f"{journal.quarantined}; a new chain starts",
        ))
    return journal, problems, ""


#: Worker state of the last heartbeat, by run status (any other: failed).
_FINAL_STATE = {Status.OK: WorkerState.FINISHED, Status.CANCELLED: WorkerState.CANCELLED}


def budget_payload(decision: str, message: str, fields: dict[str, Any]) -> BudgetPayload:
    """BUDGET payload: the known fields go to the payload, the rest (and an
    ``extra`` dict) to ``extra``."""
    known = {k: v for k, v in fields.items() if k in _BUDGET_FIELDS}
    extra = {k: v for k, v in fields.items() if k not in _BUDGET_FIELDS}
    if "extra" in extra and isinstance(extra["extra"], dict):
        extra = {**extra.pop("extra"), **extra}
    return BudgetPayload(decision=decision, message=message, extra=extra, **known)


def stage_failed_payload(name: str, exc: BaseException) -> MessagePayload:
    """The ERROR of stage ``name`` ending with ``exc`` (with its traceback's tail)."""
    return MessagePayload(
        message=f"stage {name} failed: {type(exc).__name__}: {exc}",
        subject=name,
        code="stage_failed",
        extra={
            "exception": type(exc).__name__,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
        },
    )


def write_plan_snapshot(plan: PlanTracker, path: Path, *, run_id: str, now: float) -> MessagePayload | None:
    """Write ``plan.json`` atomically; the WARNING to publish when it failed, else None."""
    try:
        snap = plan.snapshot()
        snap["run_id"] = run_id
        snap["updated_ts"] = now
        write_json(path, snap, allow_nan=False, default=str)
    except OSError as exc:
        return MessagePayload(message=f"cannot write {PLAN}: {exc}", subject=PLAN,
                              code="plan_write_failed")
    return None


class Telemetry:
    """Facade over bus, sinks, plan, heartbeat and cancellation.

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
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.enabled = bool(enabled)
        self.config_dict = dict(config_dict or {})
        self.budget_s = None if budget_s is None else float(budget_s)
        self.cancel = cancel if cancel is not None else CancelToken()
        self._clock = clock
        self._mono = mono
        self._mono_t0 = mono()
        self.progress_interval_s = float(progress_interval_s)
        self.snapshot_interval_s = float(snapshot_interval_s)
        self._journal_fsync = bool(journal_fsync)
        self._heartbeat_interval_s = float(heartbeat_interval_s)
        self._stall_after_s = stall_after_s
        self.progress_max_gap_s = float(progress_max_gap_s)
        self._trace_on = bool(self.config_dict.get("array_trace", True))
        self.plan = PlanTracker(stages, clock=mono)
        self.bus = EventBus(clock=clock)
        self.journal: JournalSink | None = None
        self.console: ConsoleSink | None = None
        self.heartbeat: HeartbeatMonitor | None = None
        self.resumed = False
        self.run_id = ""
        self._stack = StageStack()
        self._throttle = ProgressThrottle(self.progress_interval_s)
        self._last_snapshot = float("-inf")
        self._snapshot_warned = False
        self._started = False
        self._finished = False
        self._cancel_reported = False
        self._extra_sinks = list(extra_sinks)
        if self.enabled:
            if console:
                self.console = ConsoleSink(console_stream, min_interval_s=console_interval_s)
                self.bus.attach(self.console)
            for sink in self._extra_sinks:
                self.bus.attach(sink)

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
            # the journal first: what a live view shows is already on disk
            sinks = self.bus.sinks
            for s in sinks:
                self.bus.detach(s)
            self.bus.attach(self.journal)
            for s in sinks:
                self.bus.attach(s)
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
    @property
    def cancel_reported(self) -> bool:
        """True once a CANCELLED event was published for this run."""
        return self._cancel_reported

    @property
    def current_stage(self) -> str:
        """Name of the innermost open stage ("" outside stages)."""
        return self._stack.current

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
        except (Cancelled, KeyboardInterrupt) as exc:
            status = Status.CANCELLED
            end_msg = str(exc) or type(exc).__name__
            if self.enabled and not self._cancel_reported:
                self._cancel_reported = True
                self.bus.publish(
                    EventKind.CANCELLED,
                    MessagePayload(message=end_msg, subject=name, code="cancelled"),
                    stage=name,
                )
            raise
        except BaseException as exc:
            status = Status.FAILED
            end_msg = f"{type(exc).__name__}: {exc}"
            if self.enabled:
                self.bus.publish(EventKind.ERROR, stage_failed_payload(name, exc), stage=name)
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
        if name:
            if step_done is not None or step_total is not None:
                done = self.plan.counters(name)[0] if step_done is None else step_done
                self.plan.update(name, done, step_total)
            rate = self._throttle.rate(name, now, substep_done=substep_done, substep_total=substep_total,
                                       file_done=file_done, file_total=file_total)
            if rate is None:
                rate = self.plan.rate(name)
            done, total = self.plan.counters(name)
            index = self.plan.index_of(name)
        else:
            rate, index = None, -1
            done = float(step_done or 0.0)
            total = float(step_total or 0.0)
        complete = (total > 0 and done >= total) or (
            substep_total > 0 and substep_done >= substep_total
        ) or (file_total > 0 and file_done >= file_total)
        if self._throttle.due(name, now, names=(file, substep), complete=complete):
            payload = ProgressPayload(
                step=name, step_index=index, step_count=len(self.plan), step_done=done, step_total=total,
                substep=substep, substep_done=int(substep_done), substep_total=int(substep_total),
                file=str(file), file_done=int(file_done), file_total=int(file_total),
                global_=self.plan.overall_progress(), rate=rate, eta_s=self.plan.eta_s(), message=message, worker=worker)
            self.bus.publish(EventKind.PROGRESS_UPDATE, payload, stage=name)
            self._write_snapshot()
        self.cancel.raise_if_cancelled()

    def _write_snapshot(self, *, force: bool = False) -> None:
        if self.out_dir is None or not self.enabled:
            return
        now = self._mono()
        if not force and now - self._last_snapshot < self.snapshot_interval_s:
            return
        self._last_snapshot = now
        problem = write_plan_snapshot(self.plan, RunFolder(self.out_dir).plan, run_id=self.run_id, now=self._clock())
        if problem is not None and not self._snapshot_warned:
            self._snapshot_warned = True
            self.bus.publish(EventKind.WARNING, problem, stage=self.current_stage)

    # ------------------------------------------------------------------
    # other events
    # ------------------------------------------------------------------
    def emit(self, kind: EventKind, payload: Payload, *, stage: str | None = None) -> Event | None:
        """Publish any event (stage defaults to the current stage).

        Returns the event, or None when telemetry is off.
        """
        if not self.enabled:
            return None
        return self.bus.publish(kind, payload, stage=self.current_stage if stage is None else stage)

    def metric(self, name: str, value: float, *, step: int | None = None, **extra: Any) -> None:
        """Publish a METRIC (e.g. a validation score or an objective value)."""
        self.emit(EventKind.METRIC, MetricPayload(name=name, value=float(value), step=step,
                                                  extra=extra))

    def warning(self, message: str, *, subject: str = "", code: str = "", **extra: Any) -> None:
        """Publish a WARNING (``subject`` names the id or file concerned)."""
        self.emit(EventKind.WARNING, MessagePayload(message=message, subject=subject, code=code,
                                                    extra=extra))

    def error(self, message: str, *, subject: str = "", code: str = "", **extra: Any) -> None:
        """Publish an ERROR (``subject`` names the id or file concerned)."""
        self.emit(EventKind.ERROR, MessagePayload(message=message, subject=subject, code=code,
                                                  extra=extra))

    def budget(self, decision: str, message: str, **fields: Any) -> None:
        """Publish a BUDGET decision; known fields (budget_s, projected_s,
        fits, max_train_fit, max_val_fit, deadline_s) go to the payload, the
        rest to ``extra``."""
        self.emit(EventKind.BUDGET, budget_payload(decision, message, fields))

    def trace(self, name: str, array) -> None:
        """Publish an ARRAY_TRACE of ``array`` (or ``array`` itself, a payload a
        Dask worker computed); no-op when off or disabled by
        ``config_dict['array_trace']``.  A failure becomes a WARNING."""
        if not (self.enabled and self._trace_on):
            return
        try:
            payload = array if isinstance(array, ArrayTracePayload) else array_trace(name, array)
        except Exception as exc:
            self.warning(f"array trace of {name} failed: {type(exc).__name__}: {exc}",
                         subject=name, code="trace_failed")
            return
        self.emit(EventKind.ARRAY_TRACE, payload)

    # ------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds since this Telemetry was created."""
        return self._mono() - self._mono_t0

    def budget_left_s(self) -> float | None:
        """``budget_s - elapsed_s()`` (None without a budget)."""
        if self.budget_s is None:
            return None
        return self.budget_s - self.elapsed_s()
