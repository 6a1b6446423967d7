"""Where per-chunk and per-volume work runs: in process, or on Dask distributed.

Without a scheduler everything runs in this process and Dask is never
imported.  ``scheduler="local"`` starts a :class:`distributed.LocalCluster`
of worker *processes*; any other value is the address of a running
scheduler (dask-jobqueue, Kubernetes, Coiled ...).  Dask is imported lazily
by :func:`require_dask`, with an actionable error when it is missing.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from .cluster import ClusterMonitor

DASK_HINT = ("Dask is needed for --scheduler: pip install 'nx47[dask]' "
             "(dask[array], distributed, dask-image, zarr)")


class DaskUnavailable(ImportError):
    """Dask (or one of distributed, dask-image, zarr) is not installed."""


def require_dask():
    """Import and return ``(dask, distributed)``; :class:`DaskUnavailable` otherwise."""
    try:
        import dask  # noqa: PLC0415 - lazy on purpose
        import distributed  # noqa: PLC0415
    except ImportError as exc:
        raise DaskUnavailable(f"{DASK_HINT} (import failed: {exc})") from exc
    return dask, distributed


class InProcess:
    """Runs tasks one after the other in this process."""

    workers = 1
    dashboard_link = ""

    def monitor(self, out_dir, *, interval_s: float = 2.0) -> None:
        """Nothing to report: no ``cluster.json`` in process."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` for every item, in order."""
        for i, item in enumerate(items):
            yield i, fn(item)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs tasks on a Dask distributed cluster.

    Parameters
    ----------
    scheduler : str
        ``"local"`` (a LocalCluster of ``workers`` processes, one thread
        each, ``memory_limit`` each) or a scheduler address.
    workers : int
        Worker processes of a local cluster.
    memory_limit : str or None
        Per-worker memory limit of a local cluster (e.g. ``"1GB"``).
    retries : int
        Times a task is retried when its worker is lost.
    """

    def __init__(self, scheduler: str, *, workers: int = 2, memory_limit: str | None = None,
                 retries: int = 2) -> None:
        _, distributed = require_dask()
        self._cluster = None
        if scheduler == "local":
            self._cluster = distributed.LocalCluster(
                n_workers=int(workers), threads_per_worker=1, processes=True,
                memory_limit=memory_limit or "auto", dashboard_address=":0")
            self.client = distributed.Client(self._cluster)
        else:
            self.client = distributed.Client(scheduler)
        self.scheduler = scheduler
        self.retries = int(retries)
        self.tasks_in_flight = 0
        self.tasks_done = 0
        self._monitor = None

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    @property
    def dashboard_link(self) -> str:
        return str(getattr(self.client, "dashboard_link", "") or "")

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks complete (any order); a task whose
        worker dies is retried ``retries`` times; closing the iterator
        cancels the tasks not finished."""
        _, distributed = require_dask()
        futures = self.client.map(fn, list(items), retries=self.retries, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        self.tasks_in_flight += len(futures)
        try:
            for fut in distributed.as_completed(futures):
                result = fut.result()
                self.tasks_in_flight -= 1
                self.tasks_done += 1
                yield index[fut.key], result
        finally:
            pending = [f for f in futures if not f.done()]
            self.tasks_in_flight = max(0, self.tasks_in_flight - len(pending))
            self.client.cancel(pending)

    def monitor(self, out_dir, *, interval_s: float = 2.0) -> None:
        """Keep ``out_dir/cluster.json`` current until :meth:`close` (the dashboard's Dask panel)."""
        self._monitor = ClusterMonitor(out_dir, info=self.client.scheduler_info,
                                       counts=lambda: (self.tasks_in_flight, self.tasks_done),
                                       scheduler=self.scheduler, dashboard_link=self.dashboard_link,
                                       interval_s=interval_s).start()

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(scheduler: str | None, *, workers: int = 2, memory_limit: str | None = None):
    """:class:`InProcess` without a scheduler, else a :class:`DaskExecutor`."""
    if not scheduler:
        return InProcess()
    return DaskExecutor(scheduler, workers=workers, memory_limit=memory_limit)


def chunk_grid(shape: Sequence[int], chunk: int) -> list[tuple[slice, slice, slice]]:
    """The core regions of a ``chunk``-sided grid over ``shape``, z-major."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    out = []
    for z in range(0, shape[0], chunk):
        for y in range(0, shape[1], chunk):
            for x in range(0, shape[2], chunk):
                out.append((slice(z, min(z + chunk, shape[0])), slice(y, min(y + chunk, shape[1])),
                            slice(x, min(x + chunk, shape[2]))))
    return out
