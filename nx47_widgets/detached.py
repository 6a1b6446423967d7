"""A run in its own process, or any run folder, followed through its journal.

:class:`DetachedRunner` runs the pipeline as its own process (``nx47 run
--config <out>/config.json``, the file written first) and follows its
``journal.jsonl``; it can also attach to any run folder,
running or finished.  A Voila page reload ends the kernel but not that
process, and the new kernel attaches again.  Its :meth:`~DetachedRunner.stop`
sends SIGTERM to a run process and a stop request to a kernel's threaded
run; :meth:`~DetachedRunner.enforce_stop` kills a holder that did not end
in time and records it (``killed.json``).  :func:`has_run` tells a folder
that holds a run (live or finished; whether it is live is its run lock's,
:mod:`nx47_pipeline.run.resume`).  It implements
:class:`~nx47_widgets.runner.Runner`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

import nx47_pipeline
from nx47_pipeline.config import RunConfig, env_names
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.run_folder import JOURNAL, RunFolder
from nx47_pipeline.run.resume import FolderBusy, pid_alive, read_lock_pid
from nx47_pipeline.telemetry.events import Event, EventKind
from nx47_pipeline.telemetry.journal import JournalFollower

from nx47_widgets.lifecycle import Holder, holder, mark_killed, request_stop

__all__ = ["DetachedRunner", "has_run"]


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
        """Start ``python -m nx47_pipeline.cli run --config <out_dir>/config.json``
        in its own session and follow it.

        The full configuration is written first (atomically) to the run
        folder's ``config.json``, which the run rewrites at its start with
        the same settings (its data root resolved); the resume check compares
        ``run_key.json``, not this file.  The process gets no ``NX47_*`` configuration variable: the
        file is its whole configuration.  It outlives the kernel.  Its
        console output goes to ``log_path`` (default ``<out_dir>/console.log``).

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

        Raises
        ------
        FolderBusy
            When another live process holds ``out_dir`` (its ``config.json``
            is left alone).
        """
        out_dir = Path(config.out_dir).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        busy = holder(out_dir)
        if busy is not None:
            raise FolderBusy(out_dir, busy.pid)
        config_path = write_json(RunFolder(out_dir).config, config.replace(out_dir=str(out_dir)).to_dict())
        config_vars = env_names()
        run_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in config_vars}
        # the child imports the same nx47_pipeline as this process (Kaggle: no install)
        pkg_parent = str(Path(nx47_pipeline.__file__).resolve().parents[1])
        paths = [p for p in run_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if pkg_parent not in paths:
            run_env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *paths])
        log = Path(log_path) if log_path else out_dir / "console.log"
        cmd = [python, "-m", "nx47_pipeline.cli", "run", "--config", str(config_path), *extra_args]
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
