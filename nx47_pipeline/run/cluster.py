"""``cluster.json``: what a Dask cluster is doing, for the dashboard's Dask panel.

A :class:`ClusterMonitor` is a small daemon thread (``Event.wait`` between
ticks, injectable clock) that rewrites ``<out>/cluster.json`` atomically every
``interval_s`` seconds while the cluster is up, and once more with
``"closed": true`` when it stops.  Fields::

    {"scheduler": "local" | "tcp://host:8786", "dashboard_link": "http://...",
     "workers": [{"name", "address", "nthreads", "memory_bytes", "memory_limit",
                  "tasks_processing"}],
     "tasks_in_flight": int, "tasks_done": int, "updated": epoch seconds,
     "closed": bool}

The worker facts come from ``Client.scheduler_info()`` (no Dask import here:
the client is handed in); the task counts from the executor's own futures.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..io.atomic import write_text
from ..io.run_folder import RunFolder



def cluster_snapshot(info: dict[str, Any], *, scheduler: str, dashboard_link: str, tasks_in_flight: int,
                     tasks_done: int, now: float, closed: bool = False) -> dict[str, Any]:
    """The ``cluster.json`` document from ``Client.scheduler_info()``'s ``info``."""
    workers = []
    for address, w in sorted((info or {}).get("workers", {}).items()):
        metrics = w.get("metrics", {}) or {}
        counts = metrics.get("task_counts", {}) or {}
        workers.append({
            "name": str(w.get("name", address)), "address": str(address),
            "nthreads": int(w.get("nthreads", 0) or 0),
            "memory_bytes": int(metrics.get("memory", 0) or 0),
            "memory_limit": int(w.get("memory_limit", 0) or 0),
            "tasks_processing": int(counts.get("executing", 0) or 0),
        })
    return {"scheduler": scheduler, "dashboard_link": dashboard_link, "workers": workers,
            "tasks_in_flight": int(tasks_in_flight), "tasks_done": int(tasks_done),
            "updated": float(now), "closed": bool(closed)}


class ClusterMonitor:
    """Rewrites ``out_dir/cluster.json`` every ``interval_s`` seconds.

    Parameters
    ----------
    out_dir : path
        The run's output folder.
    info : callable
        Returns ``Client.scheduler_info()``.
    counts : callable
        Returns ``(tasks_in_flight, tasks_done)``.
    scheduler, dashboard_link : str
        As given to the executor / reported by the client.
    interval_s : float
        Seconds between rewrites.
    clock : callable
        Wall-clock seconds (``time.time``), injectable for tests.
    """

    def __init__(self, out_dir: str | Path, *, info: Callable[[], dict], counts: Callable[[], tuple[int, int]],
                 scheduler: str, dashboard_link: str, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.path = RunFolder(out_dir).cluster
        self._info, self._counts = info, counts
        self._scheduler, self._link = scheduler, dashboard_link
        self._interval, self._clock = float(interval_s), clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, *, closed: bool = False) -> None:
        """Write one snapshot now (a failing client query keeps the last file)."""
        try:
            info = self._info() if not closed else {}
        except Exception:  # noqa: BLE001 - a scheduler gone away: keep the previous snapshot
            return
        in_flight, done = self._counts()
        doc = cluster_snapshot(info, scheduler=self._scheduler, dashboard_link=self._link,
                               tasks_in_flight=0 if closed else in_flight, tasks_done=done,
                               now=self._clock(), closed=closed)
        write_text(self.path, json.dumps(doc))

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.write()

    def start(self) -> "ClusterMonitor":
        self.write()
        self._thread = threading.Thread(target=self._loop, name="nx47-cluster-monitor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and write the final ``closed`` snapshot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write(closed=True)
