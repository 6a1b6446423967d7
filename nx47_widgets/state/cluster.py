"""The Dask cluster of a run: what ``<out>/cluster.json`` says, and how fresh it is.

A run that uses a Dask scheduler rewrites ``cluster.json`` in its output
folder (atomically) about every 2 s while the cluster is up, and once more
when it closes::

    {"scheduler": "local", "dashboard_link": "http://127.0.0.1:8787/status",
     "workers": [{"name": "0", "address": "tcp://...", "nthreads": 1,
                  "memory_bytes": 412000000, "memory_limit": 1000000000,
                  "tasks_processing": 1}],
     "tasks_in_flight": 3, "tasks_done": 10, "updated": 1733112345.2, "closed": false}

Every field may be missing (older files): a missing field is shown as
unknown, never as an error.  A file that is not JSON, not an object, or holds
a field of the wrong type is *malformed*: the panel names the file and the
field.  An in-process run writes no file and the panel stays hidden.

:class:`ClusterState` is a reducer like the others (RUN_START and
EXEC_COMPLETE tell it the run's folder, start and end) plus :meth:`poll`,
which the dashboard's UI pump calls on its time tick (about once a second,
the cadence of the heartbeat's ages): it re-reads the file only when its
``stat`` changed.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nx47_pipeline.io.run_folder import CLUSTER, RunFolder
from nx47_pipeline.telemetry.events import Event, EventKind
from nx47_widgets.loaders import read_cluster_doc

__all__ = ["STALE_AFTER_S", "ClusterSnapshot", "ClusterState", "WorkerInfo",
           "parse_cluster", "read_cluster", "UP", "CLOSED", "STALE", "ENDED", "MALFORMED"]

#: The file a run with a Dask scheduler writes in its output folder.
#: Seconds without an update after which a running run's cluster reads stale
#: (the writer rewrites the file about every 2 s).
STALE_AFTER_S = 10.0

#: Conditions of the panel.
UP, CLOSED, STALE, ENDED, MALFORMED = "up", "closed", "stale", "ended", "malformed"


@dataclass(frozen=True)
class WorkerInfo:
    """One Dask worker as ``cluster.json`` reports it (None: not reported)."""

    name: str
    address: str = ""
    nthreads: int | None = None
    memory_bytes: int | None = None
    memory_limit: int | None = None
    tasks_processing: int | None = None

    @property
    def memory_frac(self) -> float | None:
        """Memory used / limit (None without both, or without a limit)."""
        if self.memory_bytes is None or not self.memory_limit:
            return None
        return self.memory_bytes / self.memory_limit


@dataclass(frozen=True)
class ClusterSnapshot:
    """What one ``cluster.json`` says (None: the field is absent)."""

    scheduler: str | None = None
    dashboard_link: str | None = None
    workers: tuple[WorkerInfo, ...] | None = None
    tasks_in_flight: int | None = None
    tasks_done: int | None = None
    updated: float | None = None
    closed: bool | None = None


def _field(obj: dict, key: str, kinds: tuple[type, ...], where: str) -> Any:
    """``obj[key]`` if present and of one of ``kinds`` (bool is never a number); None if absent."""
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    numeric = int in kinds or float in kinds
    if (numeric and isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{where}{key!r} should be {want}, got {json.dumps(v)[:60]}")
    if numeric and isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where}{key!r} should be a finite number, got {v!r}")
    return v


def _count(obj: dict, key: str, where: str = "") -> int | None:
    v = _field(obj, key, (int, float), where)
    return None if v is None else int(v)


def _worker(obj: Any, i: int) -> WorkerInfo:
    where = f"workers[{i}]: "
    if not isinstance(obj, dict):
        raise ValueError(f"{where}should be an object, got {json.dumps(obj)[:60]}")
    name = _field(obj, "name", (str, int), where)
    address = _field(obj, "address", (str,), where) or ""
    return WorkerInfo(name=str(name) if name is not None else (address or f"worker {i}"),
                      address=address, nthreads=_count(obj, "nthreads", where),
                      memory_bytes=_count(obj, "memory_bytes", where),
                      memory_limit=_count(obj, "memory_limit", where),
                      tasks_processing=_count(obj, "tasks_processing", where))


def parse_cluster(obj: Any) -> ClusterSnapshot:
    """A :class:`ClusterSnapshot` from the parsed JSON of ``cluster.json``.

    Parameters
    ----------
    obj : object
        The parsed file.  Unknown fields are ignored; missing ones are None.

    Returns
    -------
    ClusterSnapshot

    Raises
    ------
    ValueError
        When ``obj`` is not an object or a field has the wrong type (the
        message names the field).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    workers = obj.get("workers")
    if workers is not None and not isinstance(workers, list):
        raise ValueError(f"'workers' should be a list, got {json.dumps(workers)[:60]}")
    updated = _field(obj, "updated", (int, float), "")
    return ClusterSnapshot(
        scheduler=_field(obj, "scheduler", (str,), ""),
        dashboard_link=_field(obj, "dashboard_link", (str,), ""),
        workers=None if workers is None else tuple(_worker(w, i) for i, w in enumerate(workers)),
        tasks_in_flight=_count(obj, "tasks_in_flight"), tasks_done=_count(obj, "tasks_done"),
        updated=None if updated is None else float(updated),
        closed=_field(obj, "closed", (bool,), ""))


def read_cluster(path: str | os.PathLike) -> ClusterSnapshot:
    """Read and parse one ``cluster.json``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ClusterSnapshot

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        When it is malformed (the message names the file).
    """
    p = Path(path)
    try:
        return parse_cluster(read_cluster_doc(p))
    except ValueError as exc:
        raise ValueError(f"{p}: malformed {CLUSTER}: {exc}") from None


class ClusterState:
    """The run's Dask cluster as the panel shows it.

    Parameters
    ----------
    out_dir : str or Path, optional
        The run folder; RUN_START events replace it.
    clock : callable
        Wall clock (the writer stamps ``updated`` with ``time.time()``).
    stale_after_s : float
        Seconds without an update after which a running run's cluster reads stale.

    Attributes
    ----------
    snapshot : ClusterSnapshot or None
        The last file read (None: none, or malformed).
    problem : str
        Why the file could not be read (names the file); "" when it could.
    condition : str or None
        :data:`UP`, :data:`CLOSED`, :data:`STALE`, :data:`ENDED` (the run
        ended without the file saying closed), :data:`MALFORMED`, or None
        (no file: the panel is hidden).
    age_s : float or None
        Seconds since the file's ``updated`` (its mtime when absent).
    version : int
        Increases on every visible change.
    """

    def __init__(self, out_dir: str | Path | None = None, *, clock: Callable[[], float] = time.time,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.clock = clock
        self.stale_after_s = float(stale_after_s)
        self.version = 0
        self.started_ts: float | None = None
        self.run_ended = False
        self.snapshot: ClusterSnapshot | None = None
        self.problem = ""
        self.condition: str | None = None
        self.age_s: float | None = None
        self._stat: tuple | None = None
        self._mtime: float | None = None
        self._shown: tuple = (None, None, "", None)  # nothing to show

    @property
    def path(self) -> Path | None:
        """``<run folder>/cluster.json`` (None before the folder is known)."""
        return None if self.out_dir is None else RunFolder(self.out_dir).cluster

    @property
    def visible(self) -> bool:
        """True when the run folder holds a cluster file of this run."""
        return self.condition is not None

    def apply(self, event: Event) -> bool:
        """Apply one event: RUN_START (folder, start), EXEC_COMPLETE (the run ended).

        Parameters
        ----------
        event : Event

        Returns
        -------
        bool
            True when what the panel shows changed.
        """
        if event.kind is EventKind.RUN_START:
            if event.payload.out_dir:
                self.out_dir = Path(event.payload.out_dir)
            self.started_ts, self.run_ended, self._stat = event.ts, False, None
        elif event.kind is EventKind.EXEC_COMPLETE:
            self.run_ended = True
        else:
            return False
        return self.poll()

    def poll(self, *, running: bool | None = None) -> bool:
        """Re-read the file if it changed and re-decide the condition.

        Parameters
        ----------
        running : bool, optional
            Whether the run still lives (default: no EXEC_COMPLETE seen yet).
            Staleness is only claimed while it runs.

        Returns
        -------
        bool
            True when what the panel shows changed.
        """
        self._reload()
        live = (not self.run_ended) if running is None else bool(running)
        self.condition, self.age_s = self._decide(live)
        ticking = self.condition in (UP, STALE) and self.age_s is not None
        shown = (self.condition, self.snapshot, self.problem, int(self.age_s) if ticking else None)
        if shown == self._shown:
            return False
        self._shown = shown
        self.version += 1
        return True

    def _reload(self) -> None:
        path = self.path
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        key = None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._stat:
            return
        self._stat = key
        self.snapshot, self.problem, self._mtime = None, "", None
        if st is None:
            return
        self._mtime = st.st_mtime
        try:
            self.snapshot = read_cluster(path)
        except ValueError as exc:
            self.problem = str(exc)
        except OSError as exc:
            self.problem = f"{path}: cannot be read ({exc.strerror or exc})"

    def _decide(self, live: bool) -> tuple[str | None, float | None]:
        if self._stat is None:
            return None, None
        if self.problem:
            return MALFORMED, None
        snap = self.snapshot
        updated = snap.updated if snap.updated is not None else self._mtime
        if self.started_ts is not None and updated is not None and updated < self.started_ts - 1.0:
            return None, None  # left by an earlier run in the folder
        age = None if updated is None else max(0.0, self.clock() - updated)
        if snap.closed:
            return CLOSED, age
        if not live:
            return ENDED, age
        if age is not None and age > self.stale_after_s:
            return STALE, age
        return UP, age
