"""The publishing half of :class:`~nx47_pipeline.telemetry.facade.Telemetry`.

:class:`EventPublisher` owns the :class:`~nx47_pipeline.telemetry.bus.EventBus`
with its console and extra sinks, knows the open stages, and has one method
per kind of event a run publishes besides its lifecycle, stage brackets and
progress (METRIC, WARNING, ERROR, BUDGET, ARRAY_TRACE, and the CANCELLED or
ERROR of a stage that ended with an exception).  ``Telemetry`` adds the run's
lifecycle, its plan, progress and heartbeat.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Sequence, TextIO

from nx47_pipeline.telemetry.bus import EventBus, Sink
from nx47_pipeline.telemetry.cancel import Cancelled
from nx47_pipeline.telemetry.console import ConsoleSink
from nx47_pipeline.telemetry.events import (
    ArrayTracePayload,
    BudgetPayload,
    Event,
    EventKind,
    MessagePayload,
    MetricPayload,
    Payload,
    Status,
)
from nx47_pipeline.telemetry.progress import StageStack
from nx47_pipeline.telemetry.trace import array_trace

__all__ = ["EventPublisher", "budget_payload", "stage_failed_payload"]

_BUDGET_FIELDS = {"budget_s", "projected_s", "fits", "max_train_fit", "max_val_fit", "deadline_s"}


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


class EventPublisher:
    """An event bus with its sinks, the open stages, and the run's event shortcuts.

    Parameters
    ----------
    enabled : bool
        False: no sink is attached and nothing is published.
    console : bool
        Attach a :class:`ConsoleSink` (writing to ``console_stream``, stdout
        by default, at most every ``console_interval_s`` for throttled kinds).
    console_stream : file-like, optional
    console_interval_s : float
    extra_sinks : sequence of Sink
        Attached after the console (e.g. a dashboard QueueSink).
    trace : bool
        False turns :meth:`trace` off.
    clock : callable
        Wall clock of the events.
    """

    def __init__(self, *, enabled: bool, console: bool, console_stream: TextIO | None,
                 console_interval_s: float, extra_sinks: Sequence[Sink], trace: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.enabled = bool(enabled)
        self.bus = EventBus(clock=clock)
        self.console: ConsoleSink | None = None
        self._stack = StageStack()
        self._trace_on = bool(trace)
        self._cancel_reported = False
        self._extra_sinks = list(extra_sinks)
        if self.enabled:
            if console:
                self.console = ConsoleSink(console_stream, min_interval_s=console_interval_s)
                self.bus.attach(self.console)
            for sink in self._extra_sinks:
                self.bus.attach(sink)

    @property
    def cancel_reported(self) -> bool:
        """True once a CANCELLED event was published for this run."""
        return self._cancel_reported

    @property
    def current_stage(self) -> str:
        """Name of the innermost open stage ("" outside stages)."""
        return self._stack.current

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

    def _stage_raised(self, name: str, exc: BaseException) -> tuple[Status, str]:
        """Publish how stage ``name`` ends with ``exc``; its STEP end's (status, message).

        A :class:`Cancelled` (or KeyboardInterrupt) is a CANCELLED event, the
        run's first only, and status ``cancelled``; any other exception an
        ERROR and status ``failed``.
        """
        if isinstance(exc, (Cancelled, KeyboardInterrupt)):
            end_msg = str(exc) or type(exc).__name__
            if self.enabled and not self._cancel_reported:
                self._cancel_reported = True
                self.bus.publish(
                    EventKind.CANCELLED,
                    MessagePayload(message=end_msg, subject=name, code="cancelled"),
                    stage=name,
                )
            return Status.CANCELLED, end_msg
        if self.enabled:
            self.bus.publish(EventKind.ERROR, stage_failed_payload(name, exc), stage=name)
        return Status.FAILED, f"{type(exc).__name__}: {exc}"
