"""A run on a worker thread of this kernel.

:class:`ThreadedRunner` runs a job (by default
:func:`nx47_pipeline.run.orchestrator.run_pipeline`) on a worker thread with a
:class:`~nx47_pipeline.telemetry.bus.QueueSink`; :meth:`~ThreadedRunner.stop`
cancels it through a :class:`~nx47_pipeline.telemetry.cancel.CancelToken`.
While it runs it registers itself (:mod:`nx47_widgets.lifecycle`): another
page stops it with a stop request, and a kernel shutting down cancels it
(the run ends CANCELLED, its lock released).  It implements
:class:`~nx47_widgets.runner.Runner`.
"""

from __future__ import annotations

import atexit
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable

from nx47_pipeline.config import RunConfig
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.bus import QueueSink
from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.telemetry.events import (
    Event,
    EventKind,
    ExecCompletePayload,
    MessagePayload,
    Status,
)

from nx47_widgets.lifecycle import clear_stop_request, read_stop_request, register_threaded, unregister

__all__ = ["ThreadedRunner", "Job", "default_job"]

#: ``job(config, cancel, sink)``: runs a pipeline, delivering events to ``sink``
#: (an object with ``handle(event)``); returns anything (kept as ``result``).
Job = Callable[[RunConfig, CancelToken, Any], Any]


def default_job(config: RunConfig, cancel: CancelToken, sink: Any) -> Any:
    """Run :func:`nx47_pipeline.run.orchestrator.run_pipeline` with ``sink`` attached.

    Parameters
    ----------
    config : RunConfig
    cancel : CancelToken
        Cancels the run cooperatively.
    sink : object
        Gets every event (``sink.handle(event)``).

    Returns
    -------
    RunResult
    """
    return run_pipeline(config, cancel=cancel, extra_sinks=[sink])


class ThreadedRunner:
    """Run one job on a daemon worker thread; events go to a bounded queue.

    Parameters
    ----------
    config : RunConfig
        Configuration of the run.
    job : callable, optional
        ``job(config, cancel, sink)``; default runs the pipeline.
    queue_maxsize : int, optional
        Size of the :class:`QueueSink` (default ``config.queue_maxsize``).

    Notes
    -----
    If the job raises, the runner itself queues an ERROR and an
    EXEC_COMPLETE(``failed``) event so the dashboard never waits forever.

    While the job runs, the runner registers the run folder as held by a
    threaded run of this process (:func:`nx47_widgets.lifecycle.register_threaded`)
    and watches it for a stop request (another page pressed Stop); when the
    process exits (a kernel shut down) it cancels the job and waits a few
    seconds for its CANCELLED end.
    """

    #: Seconds between two looks for a stop request.
    watch_s = 0.2
    #: Seconds an exiting process waits for a cancelled job to end.
    exit_wait_s = 8.0

    def __init__(self, config: RunConfig, *, job: Job | None = None,
                 queue_maxsize: int | None = None) -> None:
        self.config = config
        self.job = job or default_job
        self.sink = QueueSink(queue_maxsize or config.queue_maxsize)
        self.cancel = CancelToken()
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_text = ""
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self.stop_requested_at: float | None = None
        self.finished_at: float | None = None
        self.out_dir = Path(config.out_dir).expanduser().resolve()
        self._marker: Path | None = None
        self._started_ts = 0.0

    def start(self) -> "ThreadedRunner":
        """Start the worker thread (once)."""
        if self._thread is not None:
            raise RuntimeError("this runner was already started; create a new one")
        self._started_ts = time.time()
        try:
            self._marker = register_threaded(self.out_dir)
        except OSError:  # no state folder: the run works, other pages cannot stop it
            self._marker = None
        _LIVE_THREADED.add(self)
        self._thread = threading.Thread(target=self._main, name="nx47-pipeline", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name="nx47-stop-watch", daemon=True).start()
        return self

    def _watch(self) -> None:
        """Turn a stop request written by another page into a cancel."""
        while not self._done.wait(self.watch_s):
            reason = read_stop_request(self.out_dir, self._started_ts)
            if reason is not None:
                clear_stop_request(self.out_dir)
                self.stop(reason)

    def _main(self) -> None:
        try:
            self.result = self.job(self.config, self.cancel, self.sink)
        except BaseException as exc:  # reported as events, kept for the caller
            self.error = exc
            self.error_text = "".join(traceback.format_exception(exc))
            now = time.time()
            for kind, payload in (
                (EventKind.ERROR, MessagePayload(message=f"{type(exc).__name__}: {exc}",
                                                 code="runner_exception")),
                (EventKind.EXEC_COMPLETE, ExecCompletePayload(status=Status.FAILED)),
            ):
                self.sink.handle(Event(seq=-1, ts=now, t=0.0, kind=kind, stage="runner",
                                       payload=payload))
        finally:
            unregister(self._marker)
            self.finished_at = time.monotonic()
            self._done.set()

    def drain(self, max_items: int | None = None) -> list[Event]:
        """Events queued since the last call."""
        return self.sink.drain(max_items)

    #: a thread of this kernel (:class:`Runner`): no process of its own
    in_this_kernel = True
    pid: int | None = None
    #: a threaded run is never killed: it stops at its next check
    killed: str | None = None

    def stop(self, reason: str = "user pressed Stop") -> str:
        """Ask the job to stop (cooperative: it checks the token); what was done, in words."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.cancel.cancel(reason)
        return "stopping: the run was asked to cancel"

    def enforce_stop(self, now: float | None = None) -> bool:
        """Nothing to enforce: the job stops at its next check of the token."""
        return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; True if it ended."""
        return self._done.wait(timeout)

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stop_latency_s(self) -> float | None:
        """Seconds from :meth:`stop` to the end of the job (None if not both)."""
        if self.stop_requested_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.stop_requested_at


#: Threaded runners of this process (cancelled when it exits).
_LIVE_THREADED: "weakref.WeakSet[ThreadedRunner]" = weakref.WeakSet()


def _cancel_threaded_runs_at_exit() -> None:
    """A kernel shutting down ends its threaded runs as CANCELLED, lock released."""
    runners = [r for r in list(_LIVE_THREADED) if r.running]
    for r in runners:
        r.stop("the kernel running this run is shutting down")
    for r in runners:
        r.join(r.exit_wait_s)


atexit.register(_cancel_threaded_runs_at_exit)
