"""Who runs in a run folder, across kernels, pages and processes.

A run folder is held by one process while a run lives in it: its pid is in
``run.lock`` (:mod:`nx47_pipeline.run.resume`).  That process is either

* ``nx47 run`` (a *detached* run): SIGTERM is its cooperative stop (the CLI
  turns it into a cancel and the run ends CANCELLED); or
* a kernel running a *threaded* run.  A signal would kill the kernel and
  the run with it (no CANCELLED, a stale lock), so another page stops it with
  a **stop request**: the file ``<out>/stop_request.json``, which the
  kernel's :class:`~nx47_widgets.threaded.ThreadedRunner` watches and turns
  into a cancel.

A kernel says that it runs a threaded run by a **marker** in the state
folder (``$NX47_STATE_DIR``, default ``<tmp>/nx47-<uid>``): one file per
(kernel pid, run folder) while the run lives.  The Voila server
(:mod:`nx47_widgets.server`) reads the markers to keep such a kernel alive
after its page was closed; a page that attaches reads them to know how to
stop the run.

When a holder had to be killed, the dashboard that killed it writes
``<out>/killed.json``, so the folder reads *killed* rather than *lost* (a
holder that died without saying so).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.run.resume import pid_alive, read_lock_pid

__all__ = [
    "Holder",
    "state_dir",
    "register_threaded",
    "unregister",
    "threaded_runs_of",
    "holder",
    "request_stop",
    "read_stop_request",
    "clear_stop_request",
    "mark_killed",
    "read_killed",
    "remove_stale_lock",
    "describe",
    "output_problem",
]

#: The file another page writes to stop a threaded run cooperatively.
#: Written by a dashboard that had to kill the process holding a run folder.

#: Holder kinds.
THREADED = "threaded"
PROCESS = "process"


def state_dir() -> Path:
    """The folder of the threaded-run markers (``$NX47_STATE_DIR``, else ``<tmp>/nx47-<uid>``)."""
    env = os.environ.get("NX47_STATE_DIR", "").strip()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(env) if env else Path(tempfile.gettempdir()) / f"nx47-{uid}"


def _key(out_dir: str | os.PathLike) -> str:
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


def register_threaded(out_dir: str | os.PathLike, pid: int | None = None) -> Path:
    """Record that process ``pid`` (default: this one) runs a threaded run in ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
    pid : int, optional

    Returns
    -------
    Path
        The marker (give it to :func:`unregister` when the run ended).
    """
    pid = os.getpid() if pid is None else int(pid)
    folder = state_dir() / "threaded"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}-{_key(out_dir)}.json"
    write_json(path, {"pid": pid, "out_dir": str(Path(out_dir).resolve()), "since": time.time()})
    return path


def unregister(marker: Path | None) -> None:
    """Remove a marker written by :func:`register_threaded` (absent: nothing)."""
    if marker is not None:
        try:
            marker.unlink()
        except OSError:
            pass


def threaded_runs_of(pid: int | None) -> list[str]:
    """The run folders where the live process ``pid`` runs threaded runs.

    Markers of dead processes are removed on the way.

    Parameters
    ----------
    pid : int or None

    Returns
    -------
    list of str
    """
    if not pid:
        return []
    folder = state_dir() / "threaded"
    out = []
    for path in sorted(folder.glob(f"{int(pid)}-*.json")):
        data = read_json(path) or {}
        if data.get("pid") != pid:
            continue
        if not pid_alive(pid):
            unregister(path)
            continue
        out.append(str(data.get("out_dir", "")))
    return out


@dataclass(frozen=True)
class Holder:
    """The process holding a run folder: ``pid`` and ``kind`` (``"threaded"`` or ``"process"``)."""

    pid: int
    kind: str

    @property
    def threaded(self) -> bool:
        return self.kind == THREADED


def holder(out_dir: str | os.PathLike) -> Holder | None:
    """The live process holding ``out_dir`` (from ``run.lock``), or None.

    Parameters
    ----------
    out_dir : str or path-like

    Returns
    -------
    Holder or None
    """
    pid = read_lock_pid(out_dir)
    if not pid_alive(pid):
        return None
    folder = str(Path(out_dir).resolve())
    kind = THREADED if folder in threaded_runs_of(pid) else PROCESS
    return Holder(pid=int(pid), kind=kind)


def request_stop(out_dir: str | os.PathLike, reason: str) -> Path:
    """Ask the threaded run in ``out_dir`` to stop (it cancels within a second or two).

    Parameters
    ----------
    out_dir : str or path-like
    reason : str
        Said by the run's CANCELLED event.

    Returns
    -------
    Path
        The stop request written.
    """
    return write_json(RunFolder(out_dir).stop_request,
                      {"reason": reason, "ts": time.time(), "by_pid": os.getpid()})


def read_stop_request(out_dir: str | os.PathLike, since: float) -> str | None:
    """The reason of a stop request written at or after wall time ``since``, else None."""
    data = read_json(RunFolder(out_dir).stop_request)
    if not isinstance(data, dict) or float(data.get("ts", 0.0)) < since:
        return None
    return str(data.get("reason") or "stop requested by another page")


def clear_stop_request(out_dir: str | os.PathLike) -> None:
    """Remove a stop request (it was served, or belongs to an earlier run)."""
    try:
        RunFolder(out_dir).stop_request.unlink()
    except OSError:
        pass


def mark_killed(out_dir: str | os.PathLike, pid: int, reason: str) -> None:
    """Record that the holder ``pid`` of ``out_dir`` was killed, and drop its dead lock.

    Parameters
    ----------
    out_dir : str or path-like
    pid : int
    reason : str
    """
    write_json(RunFolder(out_dir).killed, {"pid": int(pid), "ts": time.time(), "reason": reason})
    remove_stale_lock(out_dir)


def read_killed(out_dir: str | os.PathLike) -> dict | None:
    """``killed.json`` of ``out_dir`` (``pid``, ``ts``, ``reason``), or None."""
    data = read_json(RunFolder(out_dir).killed)
    return data if isinstance(data, dict) else None


def remove_stale_lock(out_dir: str | os.PathLike) -> bool:
    """Remove ``run.lock`` when the process it names is dead; True if removed."""
    path = RunFolder(out_dir).lock
    pid = read_lock_pid(out_dir)
    if not path.exists() or pid_alive(pid):
        return False
    try:
        path.unlink()
    except OSError:
        return False
    return True


def describe(h: Holder | None) -> str:
    """A holder in words (for status lines)."""
    if h is None:
        return "no live run"
    what = "a threaded run in a kernel" if h.threaded else "a detached run process"
    return f"{what} (pid {h.pid})"


def output_problem(out_dir: str | os.PathLike) -> str | None:
    """Why a run cannot write into ``out_dir``, or None.

    Checked without changing anything a run left: the folder (or, when it
    does not exist yet, the nearest folder above it) must be a folder on a
    writable file system, with write permission (a folder without any write
    bit counts as read-only, also for root), and a folder that does not exist
    yet must be creatable there (``/proc/x``, ``/sys/x`` are not): a probe
    folder is made and removed at once next to where it would go.

    Parameters
    ----------
    out_dir : str or path-like

    Returns
    -------
    str or None
        One sentence naming the folder and the problem.
    """
    path = Path(out_dir).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"output folder {path} cannot be created: {probe} is a file, not a folder"
    try:
        st = os.statvfs(probe)
        read_only_fs = bool(st.f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only_fs = False
    if read_only_fs:
        return f"output folder {path} cannot be written: {probe} is on a read-only file system"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output folder {path} is not writable ({probe}: permission denied)"
    try:
        mode = probe.stat().st_mode
    except OSError as exc:
        return f"output folder {path} cannot be checked: {exc}"
    if not mode & 0o222:
        return (f"output folder {path} is not writable: {probe} is read-only "
                f"(mode {mode & 0o777:03o})")
    if probe != path:
        key = str(path)
        hit = _PROBED.get(key)
        if hit is not None and time.monotonic() - hit[0] < _PROBE_TTL_S:
            return hit[1]
        problem = None
        try:
            made = tempfile.mkdtemp(prefix=".nx47-probe-", dir=probe)
        except OSError as exc:
            problem = (f"output folder {path} cannot be created in {probe}: "
                       f"{exc.strerror or exc}")
        else:
            try:
                os.rmdir(made)
            except OSError:
                pass
        _PROBED[key] = (time.monotonic(), problem)
        return problem
    return None


#: Seconds a creation probe's answer is reused (the page checks every second).
_PROBE_TTL_S = 5.0
_PROBED: dict[str, tuple[float, str | None]] = {}
