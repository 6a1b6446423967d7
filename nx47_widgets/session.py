"""One page's run: start, attach, stop, and an honest end.

:class:`RunSession` owns the page's runner (a threaded run, a detached run
process, or a run folder it follows) and the :class:`DashboardState` the
events fold into.  Plain Python (no widgets): the dashboard renders what it
says.  It makes three promises:

* Stop always ends: a threaded run is cancelled through its token (or, when
  it lives in another kernel, through a stop request), a run process through
  SIGTERM; a holder that has not ended ``stop_grace_s`` later is killed and
  the run reads **killed** (``killed.json``, the dead lock removed).
* A run whose process is gone without a final event reads **lost** (or
  **killed**), never "running" and never "finished".
* A folder another live process holds is refused for a new run (attach to it
  instead).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import Event

from nx47_widgets.lifecycle import Holder, describe, holder, read_killed, remove_stale_lock
from nx47_widgets.detached import DetachedRunner
from nx47_widgets.runner import Runner
from nx47_widgets.threaded import Job, ThreadedRunner
from nx47_widgets.state import DashboardState
from nx47_widgets.state.heartbeat import KILLED, LOST

__all__ = ["RunSession", "FolderBusyError"]

#: Mode names.
THREADED, DETACHED, ATTACHED = "worker thread", "detached process", "attached"


class FolderBusyError(RuntimeError):
    """The output folder is held by another live run (attach to it instead)."""

    def __init__(self, folder: Path, h: Holder) -> None:
        super().__init__(f"{folder} is busy: {describe(h)} is running there; "
                         "press Attach to follow it, or choose another output folder")
        self.folder, self.holder = folder, h


class RunSession:
    """The run one page shows.

    Parameters
    ----------
    out_dir : str
        The output folder the page starts with.
    job : callable, optional
        The threaded job (default: the pipeline).
    clock : callable
        Wall clock of the heartbeat light.

    Attributes
    ----------
    runner : Runner or None
        A :class:`~nx47_widgets.threaded.ThreadedRunner` or a
        :class:`~nx47_widgets.detached.DetachedRunner`, driven through the
        :class:`~nx47_widgets.runner.Runner` protocol only.
    state : DashboardState
    mode : str or None
        ``"worker thread"``, ``"detached process"`` or ``"attached"``.
    folder : Path or None
        The run folder shown.
    """

    #: Seconds after the runner stopped before a run without a final event reads lost.
    end_grace_s = 1.5

    def __init__(self, out_dir: str, *, job: Job | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.clock = clock
        self.state = DashboardState(out_dir=out_dir, clock=clock)
        self.runner: Runner | None = None
        self.mode: str | None = None
        self.folder: Path | None = None
        self._gone_at: float | None = None

    @property
    def running(self) -> bool:
        """True while the run shown lives (thread or process)."""
        return self.runner is not None and self.runner.running

    def _new_state(self, folder: Path) -> None:
        self.state = DashboardState(out_dir=str(folder), clock=self.clock, folder=folder)
        self.folder, self._gone_at = folder, None

    def start(self, config: RunConfig, *, detached: bool) -> Runner:
        """Start a run in ``config.out_dir``.

        Raises
        ------
        RuntimeError
            While a run of this page is going on.
        FolderBusyError
            When another live process holds the folder.
        """
        if self.running:
            raise RuntimeError("a run is already in progress; press Stop first")
        folder = Path(config.out_dir).expanduser().resolve()
        h = holder(folder)
        if h is not None:
            raise FolderBusyError(folder, h)
        remove_stale_lock(folder)
        self._new_state(folder)
        if detached:
            self.runner, self.mode = DetachedRunner.launch(config), DETACHED
        else:
            self.runner, self.mode = ThreadedRunner(config, job=self.job).start(), THREADED
        return self.runner

    def attach(self, folder: str | os.PathLike) -> DetachedRunner:
        """Follow the run folder ``folder`` (running or finished) from its start.

        Raises
        ------
        RuntimeError
            While a threaded run of this page is going on.
        FileNotFoundError
            When the folder holds no journal.
        """
        if self.running and self.runner.in_this_kernel:
            raise RuntimeError("a threaded run is in progress; stop it before attaching")
        path = Path(folder).expanduser().resolve()
        runner = DetachedRunner.attach(path)
        self._new_state(path)
        self.runner, self.mode = runner, ATTACHED
        return runner

    def stop(self, reason: str = "user pressed Stop") -> str:
        """Stop the run cooperatively; what was done, in words."""
        r = self.runner
        if r is None or not r.running:
            return "no run to stop"
        return r.stop(reason)

    def drain(self) -> list[Event]:
        """New events of the run (the UI pump's source)."""
        return self.runner.drain() if self.runner is not None else []

    def check_end(self, now: float | None = None) -> bool:
        """Kill a holder that ignored Stop; mark a run gone without a final event.

        Called by the UI pump after each batch.

        Parameters
        ----------
        now : float, optional
            ``time.monotonic()``.

        Returns
        -------
        bool
            True when the run's end was decided now (killed or lost).
        """
        r, st = self.runner, self.state
        if r is None or st.ended:
            return False
        now = time.monotonic() if now is None else now
        if r.enforce_stop(now):
            self._gone_at = None
        if r.running:
            self._gone_at = None
            return False
        if self._gone_at is None:  # let the last journal lines be read first
            self._gone_at = now
            return False
        if now - self._gone_at < self.end_grace_s:
            return False
        killed = r.killed or self._killed_record()
        if killed:
            st.end_without_event(KILLED, killed)
        else:
            st.end_without_event(LOST, "the run's process ended without a final event "
                                       "(killed from outside, or crashed)")
        if self.folder is not None:
            remove_stale_lock(self.folder)
        return True

    def wait(self, timeout: float | None, flush_rest: Callable[[], bool],
             pump_alive: Callable[[], bool]) -> bool:
        """Block until the run ended and all its events were applied.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait at most (None: no limit).
        flush_rest : callable
            Drains and applies what is left; True when there was something.
        pump_alive : callable
            Whether a UI pump still applies events by itself.

        Returns
        -------
        bool
            True if the run's end was applied.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.state.ended:
                return True
            if self.runner is not None and not self.runner.running:
                # the run is over: one last drain in case the pump is not running
                if not flush_rest() and (self.state.ended or not pump_alive()):
                    return self.state.ended
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _killed_record(self) -> str | None:
        if self.folder is None:
            return None
        rec = read_killed(self.folder)
        started = self.state.heartbeat.started_ts
        if rec is None or (started is not None and float(rec.get("ts", 0)) < started):
            return None
        return str(rec.get("reason") or "killed")
