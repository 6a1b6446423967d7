"""Run the pipeline off the kernel's main thread and pump its events to the UI.

* :class:`ThreadedRunner` runs a job (by default
  :func:`nx47_pipeline.run.orchestrator.run_pipeline`) on a worker thread with a
  :class:`~nx47_pipeline.telemetry.bus.QueueSink`; :meth:`~ThreadedRunner.stop`
  cancels it through a :class:`~nx47_pipeline.telemetry.cancel.CancelToken`.
  While it runs it registers itself (:mod:`nx47_widgets.lifecycle`): another
  page stops it with a stop request, and a kernel shutting down cancels it
  (the run ends CANCELLED, its lock released).
* :class:`DetachedRunner` runs the pipeline as its own process (``nx47 run``)
  and follows its ``journal.jsonl``; it can also attach to any run folder,
  running or finished.  A Voila page reload ends the kernel but not that
  process, and the new kernel attaches again.  Its :meth:`~DetachedRunner.stop`
  sends SIGTERM to a run process and a stop request to a kernel's threaded
  run; :meth:`~DetachedRunner.enforce_stop` kills a holder that did not end
  in time and records it (``killed.json``).  :func:`has_run` tells a folder
  that holds a run (live or finished; whether it is live is its run lock's,
  :mod:`nx47_pipeline.run.resume`).
* :class:`UIPump` is the single consumer: it drains a source at most every
  ``interval`` seconds and hands the batch to one ``flush`` call, so widget
  syncs stay bounded (about ``1 / interval`` per second) whatever the event
  rate.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import nx47_pipeline
from nx47_pipeline.config import RunConfig, env_name
from nx47_pipeline.io.run_folder import JOURNAL, RunFolder
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.run.resume import pid_alive, read_lock_pid
from nx47_pipeline.telemetry.bus import QueueSink
from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.telemetry.events import (
    Event,
    EventKind,
    ExecCompletePayload,
    MessagePayload,
    Status,
)
from nx47_pipeline.telemetry.journal import JournalFollower

from nx47_widgets.lifecycle import (
    Holder,
    clear_stop_request,
    holder,
    mark_killed,
    read_stop_request,
    register_threaded,
    request_stop,
    unregister,
)

__all__ = [
    "Runner",
    "ThreadedRunner",
    "DetachedRunner",
    "UIPump",
    "Job",
    "config_env",
    "default_job",
    "has_run",
]

#: ``job(config, cancel, sink)``: runs a pipeline, delivering events to ``sink``
#: (an object with ``handle(event)``); returns anything (kept as ``result``).
Job = Callable[[RunConfig, CancelToken, Any], Any]


@runtime_checkable
class Runner(Protocol):
    """What the page's :class:`~nx47_widgets.session.RunSession` drives, however the run lives.

    ``running`` while it has not ended; ``drain()`` its new events;
    ``stop(reason)`` asks it to stop and says what was done, in words;
    ``join(timeout)`` waits for the end; ``enforce_stop(now)`` kills a
    process that ignored Stop past its grace (True when it did now);
    ``killed`` says why this page killed the run (None: it did not);
    ``in_this_kernel`` is True for a run on a thread of the page's own kernel
    (it ends with the kernel; another run cannot be attached meanwhile);
    ``pid`` is the run's own process (None for a thread of this kernel).
    """

    in_this_kernel: bool
    killed: str | None

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    def drain(self) -> list[Event]: ...

    def stop(self, reason: str = ...) -> str: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def enforce_stop(self, now: float | None = None) -> bool: ...


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


# ---------------------------------------------------------------------------
# Detached mode
# ---------------------------------------------------------------------------
def config_env(config: RunConfig) -> dict[str, str]:
    """``NX47_*`` environment variables that reproduce ``config`` in another process."""
    out: dict[str, str] = {}
    for key, value in config.to_dict().items():
        if value is None:
            text = "auto"
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        out[env_name(key)] = text
    return out


def has_run(out_dir: str | os.PathLike) -> bool:
    """True if ``out_dir`` holds a run's journal (running or finished).

    Parameters
    ----------
    out_dir : str or path-like

    Returns
    -------
    bool
    """
    return RunFolder(out_dir).journal.exists()


class DetachedRunner:
    """Follow a run folder's journal; optionally launch the run as a process.

    Parameters
    ----------
    out_dir : str or path-like
        The run folder (holds ``journal.jsonl`` and, while the run lives,
        ``run.lock`` with its pid).
    process : subprocess.Popen, optional
        The process when this object launched it.

    Attributes
    ----------
    stopped_holder : Holder or None
        The process :meth:`stop` asked to stop.
    killed : str or None
        Why :meth:`enforce_stop` killed that process (None: it did not).
    """

    #: Seconds a holder has to end after Stop before :meth:`enforce_stop` kills it.
    stop_grace_s = 20.0

    def __init__(self, out_dir: str | os.PathLike, *,
                 process: subprocess.Popen | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.journal = RunFolder(self.out_dir).journal
        self.follower = JournalFollower(self.journal)
        self.process = process
        self.stop_requested_at: float | None = None
        self.stopped_holder: Holder | None = None
        self.killed: str | None = None
        self._finished = False
        self._lock = threading.Lock()

    @classmethod
    def launch(cls, config: RunConfig, *, env: Mapping[str, str] | None = None,
               python: str = sys.executable, log_path: str | os.PathLike | None = None,
               extra_args: Sequence[str] = ()) -> "DetachedRunner":
        """Start ``python -m nx47_pipeline.cli run`` in its own session and follow it.

        The full configuration travels as ``NX47_*`` environment variables
        (see :func:`config_env`) plus ``--data`` / ``--out``.  The process
        outlives the kernel.  Its console output goes to ``log_path``
        (default ``<out_dir>/console.log``).

        Parameters
        ----------
        config : RunConfig
            The run (its ``out_dir`` is created).
        env : mapping, optional
            Base environment of the process (default ``os.environ``).
        python : str
            The interpreter.
        log_path : str or path-like, optional
            Where the process's console output goes.
        extra_args : sequence of str
            More arguments of ``nx47 run``.

        Returns
        -------
        DetachedRunner
            Following the new process; what earlier runs wrote to the journal
            is skipped.
        """
        out_dir = Path(config.out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        run_env = dict(os.environ if env is None else env)
        run_env.update(config_env(config.replace(out_dir=str(out_dir))))
        # the child imports the same nx47_pipeline as this process (Kaggle: no install)
        pkg_parent = str(Path(nx47_pipeline.__file__).resolve().parents[1])
        paths = [p for p in run_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if pkg_parent not in paths:
            run_env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *paths])
        log = Path(log_path) if log_path else out_dir / "console.log"
        cmd = [python, "-m", "nx47_pipeline.cli", "run", "--data", str(config.data_root),
               "--out", str(out_dir), *extra_args]
        runner = cls(out_dir)
        runner.drain()  # skip what earlier runs wrote: a rerun appends to the same journal
        runner._finished = False
        with open(log, "ab") as fh:
            runner.process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=run_env,
                                              start_new_session=True, cwd=os.getcwd())
        return runner

    @classmethod
    def attach(cls, out_dir: str | os.PathLike) -> "DetachedRunner":
        """Follow the run folder ``out_dir`` (running or finished) from its start.

        Parameters
        ----------
        out_dir : str or path-like

        Returns
        -------
        DetachedRunner

        Raises
        ------
        FileNotFoundError
            When ``out_dir`` holds no journal.
        """
        folder = Path(out_dir)
        if not has_run(folder):
            raise FileNotFoundError(f"{folder}: no {JOURNAL}, nothing to attach to")
        return cls(folder)

    @property
    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return read_lock_pid(self.out_dir)

    @property
    def running(self) -> bool:
        """True while the run process lives (known child, or pid in run.lock)."""
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(read_lock_pid(self.out_dir))

    def drain(self) -> list[Event]:
        """Complete journal lines written since the last call, as events."""
        with self._lock:
            try:
                events = self.follower.poll()
            except FileNotFoundError:
                events = []
        for ev in events:
            if ev.kind is EventKind.RUN_START:
                self._finished = False
            elif ev.kind is EventKind.EXEC_COMPLETE:
                self._finished = True
        return events

    @property
    def finished(self) -> bool:
        """True once EXEC_COMPLETE was read from the journal."""
        return self._finished

    @property
    def holder(self) -> Holder | None:
        """The live process holding the folder (the one this runner launched first)."""
        if self.process is not None:
            return Holder(self.process.pid, "process") if self.process.poll() is None else None
        return holder(self.out_dir)

    #: a process of its own, or a run in another kernel (:class:`Runner`)
    in_this_kernel = False

    def stop(self, reason: str = "user pressed Stop") -> str:
        """Stop the run cooperatively: SIGTERM to a run process (the CLI turns
        it into a cancel), a stop request to a kernel's threaded run.

        Parameters
        ----------
        reason : str
            Said by the run's CANCELLED event (threaded runs).

        Returns
        -------
        str
            What was done, in words.
        """
        h = self.holder
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        if h is None:
            return "no live process holds the folder"
        self.stopped_holder = h
        if h.threaded:
            request_stop(self.out_dir, reason)
            return f"stopping: the threaded run in kernel pid {h.pid} was asked to cancel"
        try:
            os.kill(h.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return "stopping: SIGTERM sent to the run process"

    def enforce_stop(self, now: float | None = None) -> bool:
        """Kill the holder asked to stop if it still lives ``stop_grace_s`` later.

        A killed holder cannot say so: ``killed.json`` records it and the dead
        lock is removed, so the folder reads *killed* and can be reused.

        Parameters
        ----------
        now : float, optional
            ``time.monotonic()`` (tests pass their own).

        Returns
        -------
        bool
            True when it killed the holder now.
        """
        h, asked = self.stopped_holder, self.stop_requested_at
        if h is None or asked is None or self.killed is not None or self._finished:
            return False
        now = time.monotonic() if now is None else now
        if now - asked < self.stop_grace_s or not pid_alive(h.pid):
            return False
        what = "kernel" if h.threaded else "run process"
        reason = (f"the {what} (pid {h.pid}) did not end within {self.stop_grace_s:.0f} s "
                  f"of Stop and was killed")
        try:
            os.kill(h.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while pid_alive(h.pid) and time.monotonic() < deadline:
            if self.process is not None:
                self.process.poll()
            time.sleep(0.05)
        mark_killed(self.out_dir, h.pid, reason)
        self.killed = reason
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the process ends (and the journal says so, if it can)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


# ---------------------------------------------------------------------------
# The UI pump
# ---------------------------------------------------------------------------
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
