"""Where per-chunk and per-volume work runs: in process, or on Dask distributed.

Without a scheduler everything runs in this process and Dask is never
imported: one task at a time (:class:`InProcess`), or up to ``threads``
tasks at once on threads (:class:`ThreadPool`; the compute of a task --
scipy.ndimage filters, numpy, the compiled Betti kernels -- releases the
GIL, so tasks overlap on idle cores).  ``scheduler="local"`` starts a :class:`distributed.LocalCluster`
of worker *processes*; any other value is the address of a running
scheduler (dask-jobqueue, Kubernetes, Coiled ...).  Dask is imported lazily
by :func:`require_dask`, with an actionable error when it is missing.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Sequence

from nx47_pipeline.telemetry.cancel import Cancelled

from .cluster import ClusterMonitor

DASK_HINT = ("Dask is needed for --scheduler: pip install 'nx47[dask]' "
             "(dask[array], distributed, dask-image, zarr)")


#: The distributed event topic workers' progress travels on.
PROGRESS_TOPIC = "nx47-progress"
#: Seconds between two progress events of one worker process (the last
#: sub-step of a task is always sent).
REMOTE_PROGRESS_INTERVAL_S = 0.5

#: Times an item whose finished result was lost with its worker is submitted
#: again before the failure is the run's.
MAX_RESUBMITS = 3

#: ``on_progress(index, done, total, what, frac, worker)``: a task's sub-step, in the driver.
DriverProgress = Callable[[int, int, int, str, float, str], None]


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


def worker_name() -> str:
    """The Dask worker running the current task ("" outside a worker)."""
    try:
        from distributed import get_worker  # noqa: PLC0415 - only on a Dask worker
    except ImportError:
        return ""
    try:
        return str(get_worker().name)
    except ValueError:
        return ""


_last_sent = {"t": 0.0}
_send_lock = threading.Lock()


def remote_progress(index: int, done: int, total: int, what: str, frac: float) -> None:
    """A task's ``progress`` on a Dask worker: a :data:`PROGRESS_TOPIC` event
    (at most one per :data:`REMOTE_PROGRESS_INTERVAL_S` per worker process,
    and the end of each sub-step), which the driver turns into PROGRESS_UPDATE."""
    from distributed import get_worker  # noqa: PLC0415 - only on a Dask worker

    now = time.monotonic()
    with _send_lock:
        if now - _last_sent["t"] < REMOTE_PROGRESS_INTERVAL_S and not (total and done >= total):
            return
        _last_sent["t"] = now
    try:
        w = get_worker()
    except ValueError:
        return
    w.log_event(PROGRESS_TOPIC, {"index": int(index), "done": int(done), "total": int(total), "what": str(what),
                                 "frac": float(frac), "name": str(w.name)})  # log_event sets "worker" to the address


def _on_worker(fn: Callable[..., Any], item: Any, with_progress: bool) -> Any:
    """Run ``fn`` on a worker; a result with a ``worker`` attribute gets the worker's name."""
    result = fn(item, remote_progress) if with_progress else fn(item)
    if hasattr(result, "worker"):
        result.worker = worker_name()
    return result


class InProcess:
    """Runs tasks one after the other in this process."""

    workers = 1
    #: tasks share this process's cores: the preflight times them on this
    #: executor, so its rates are the stage's throughput
    shares_cores = True
    dashboard_link = ""
    #: items are taken one at a time, each when the previous task is done
    lazy = True

    def monitor(self, out_dir, *, interval_s: float = 2.0) -> None:
        """Nothing to report: no ``cluster.json`` in process."""

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, on_progress: DriverProgress | None = None,
            on_lost: Callable[[str], None] | None = None,
            check: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, fn(item))`` for every item, in order.  With ``on_progress``
        the task is called as ``fn(item, progress)`` and its sub-steps reach
        ``on_progress`` directly; ``check`` runs before every task (it may raise
        to stop the loop)."""
        for i, item in enumerate(items):
            if check is not None:
                check()
            if on_progress is None:
                yield i, fn(item)
            else:
                yield i, fn(item, lambda index, done, total, what, frac: on_progress(index, done, total, what,
                                                                                     frac, ""))

    def close(self) -> None:
        pass


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def local_threads(threads: int) -> int:
    """Tasks at once in process for the ``threads`` setting: as set, or with
    0 (auto) 2 when the process may run on at least 2 cores, else 1."""
    threads = int(threads)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = auto), got {threads!r}")
    return threads if threads else min(2, available_cores())


class ThreadPool:
    """Runs up to ``threads`` tasks at once on threads of this process.

    The same contract as :class:`DaskExecutor`: all items are taken at once
    (``lazy`` False), results come as tasks complete, and a task's progress
    reaches ``on_progress`` in the driver's thread (through a queue drained
    every ``tick_s``), never from the task's own thread.  When the driver
    leaves the iterator (``check`` raised, an error, ``break``) the tasks not
    started are cancelled and the running ones stop at their next progress
    report (:class:`~nx47_pipeline.telemetry.cancel.Cancelled`); the driver
    does not wait for them.

    Parameters
    ----------
    threads : int
        Tasks at once (>= 1).
    """

    dashboard_link = ""
    lazy = False
    #: tasks share this process's cores (and its GIL): how much they overlap
    #: is measured, by the preflight timing them on this executor
    shares_cores = True

    def __init__(self, threads: int = 2) -> None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.workers = int(threads)

    def monitor(self, out_dir, *, interval_s: float = 2.0) -> None:
        """Nothing to report: no ``cluster.json`` in process."""

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, on_progress: DriverProgress | None = None,
            on_lost: Callable[[str], None] | None = None, check: Callable[[], None] | None = None,
            tick_s: float = 0.25) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks complete (any order); ``fn(item,
        progress)`` with ``on_progress``, else ``fn(item)``."""
        items = list(items)
        if not items:
            return
        messages: queue.SimpleQueue = queue.SimpleQueue()
        stopping = threading.Event()

        def progress(index: int, done: int, total: int, what: str, frac: float) -> None:
            if stopping.is_set():
                raise Cancelled("the stage's tasks were stopped")
            messages.put((index, done, total, what, frac))

        def call(item: Any) -> Any:
            if stopping.is_set():
                raise Cancelled("the stage's tasks were stopped")
            return fn(item, progress) if on_progress is not None else fn(item)

        def drain() -> None:
            while True:
                try:
                    msg = messages.get_nowait()
                except queue.Empty:
                    return
                if on_progress is not None:
                    on_progress(*msg, "")

        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(items)), thread_name_prefix="nx47-task")
        futures = {pool.submit(call, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=tick_s, return_when=FIRST_COMPLETED)
                drain()
                if check is not None:
                    check()
                for fut in sorted(done, key=futures.__getitem__):
                    yield futures[fut], fut.result()
            drain()
        finally:
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)

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
        Worker processes of a local cluster; with a scheduler address, the
        workers waited for (at most ``wait_workers_s``; fewer is accepted,
        none is an error).
    memory_limit : str or None
        Per-worker memory limit of a local cluster (e.g. ``"1GB"``).
    retries : int
        Times a task is retried when its worker is lost.
    """

    #: workers are processes of their own (often machines): the preflight
    #: times one volume in process and the projection shares the volumes out
    #: (:func:`nx47_pipeline.run.budget.parallel_workers`)
    shares_cores = False

    def __init__(self, scheduler: str, *, workers: int = 2, memory_limit: str | None = None,
                 retries: int = 2, connect_timeout_s: float = 30.0, wait_workers_s: float = 60.0) -> None:
        _, distributed = require_dask()
        self._cluster = None
        if scheduler == "local":
            self._cluster = distributed.LocalCluster(
                n_workers=int(workers), threads_per_worker=1, processes=True,
                memory_limit=memory_limit or "auto", dashboard_address=":0")
            self.client = distributed.Client(self._cluster)
        else:
            self.client = distributed.Client(scheduler, timeout=connect_timeout_s)
            try:  # a cluster being scaled up (dask-jobqueue, Kubernetes): wait for the workers asked for
                self.client.wait_for_workers(int(workers), timeout=wait_workers_s)
            except TimeoutError:
                if not self.client.scheduler_info().get("workers"):
                    self.client.close()
                    raise TimeoutError(f"Dask scheduler {scheduler}: no worker joined within "
                                       f"{wait_workers_s:.0f} s") from None
        self.scheduler = scheduler
        self.retries = int(retries)
        self.tasks_in_flight = 0
        self.tasks_done = 0
        self._monitor = None
        self._messages: queue.SimpleQueue = queue.SimpleQueue()
        # workers' progress events arrive on the client's event loop; the
        # driver's loop in map() drains them (telemetry stays single-threaded)
        self.client.subscribe_topic(PROGRESS_TOPIC, self._messages.put)

    lazy = False

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    @property
    def dashboard_link(self) -> str:
        return str(getattr(self.client, "dashboard_link", "") or "")

    def _worker_addresses(self) -> set[str]:
        try:
            return set(self.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001 - a scheduler that does not answer: no loss seen this time
            return set()

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *, on_progress: DriverProgress | None = None,
            on_lost: Callable[[str], None] | None = None, check: Callable[[], None] | None = None,
            tick_s: float = 0.5, count: bool = True) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks complete (any order).

        All items are submitted at once.  Every ``tick_s`` (and after each
        result) the driver's loop forwards the workers' progress events to
        ``on_progress``, reports each worker that left the cluster to
        ``on_lost`` (its tasks are rescheduled by Dask, and retried
        ``retries`` times when they fail) and calls ``check`` (which may
        raise, e.g. :class:`~nx47_pipeline.telemetry.cancel.Cancelled`).
        Leaving the iterator early (an exception, ``break``) cancels the
        tasks not finished.  ``count=False`` leaves the tasks out of
        ``tasks_in_flight`` / ``tasks_done`` (``cluster.json`` counts the
        stage's chunks, not the post-processing's tasks).
        """
        _, distributed = require_dask()
        items = list(items)
        futures = self.client.map(_on_worker, [fn] * len(items), items, [on_progress is not None] * len(items),
                                  retries=self.retries, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        pending = set(futures)
        counted = 1 if count else 0
        self.tasks_in_flight += counted * len(futures)
        known = self._worker_addresses()
        resubmits: dict[int, int] = {}
        try:
            while pending:
                try:
                    done, _ = distributed.wait(list(pending), timeout=tick_s, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                self._drain(on_progress)
                now = self._worker_addresses()
                if now:
                    for gone in sorted(known - now):
                        if on_lost is not None:
                            on_lost(gone)
                    known = now
                if check is not None:
                    check()
                for fut in sorted(done, key=lambda f: index[f.key]):
                    i = index[fut.key]
                    pending.discard(fut)
                    try:
                        result = fut.result()
                    except Exception:
                        # a finished result lost with its worker before the gather
                        # (the client's state of that future may be unusable
                        # afterwards): the item runs again as a new task
                        resubmits[i] = resubmits.get(i, 0) + 1
                        if fut.status == "error" or resubmits[i] > MAX_RESUBMITS:
                            raise
                        self.client.cancel([fut])
                        again = self.client.submit(_on_worker, fn, items[i], on_progress is not None,
                                                   retries=self.retries, pure=False)
                        index[again.key] = i
                        futures.append(again)
                        pending.add(again)
                        continue
                    self.tasks_in_flight -= counted
                    self.tasks_done += counted
                    yield i, result
            self._drain(on_progress)
        finally:
            left = [f for f in futures if not f.done()]
            self.tasks_in_flight = max(0, self.tasks_in_flight - counted * len(left))
            if left:
                self.client.cancel(left)

    def _drain(self, on_progress: DriverProgress | None) -> None:
        while True:
            try:
                event = self._messages.get_nowait()
            except queue.Empty:
                return
            if on_progress is None:
                continue
            msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
            try:
                on_progress(int(msg["index"]), int(msg["done"]), int(msg["total"]), str(msg["what"]),
                            float(msg["frac"]), str(msg["name"]))
            except (KeyError, TypeError, ValueError):
                continue

    def monitor(self, out_dir, *, interval_s: float = 2.0) -> None:
        """Keep ``out_dir/cluster.json`` current until :meth:`close` (the dashboard's Dask panel)."""
        self._monitor = ClusterMonitor(out_dir, info=self.client.scheduler_info,
                                       counts=lambda: (self.tasks_in_flight, self.tasks_done),
                                       scheduler=self.scheduler, dashboard_link=self.dashboard_link,
                                       interval_s=interval_s).start()

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
        try:
            self.client.unsubscribe_topic(PROGRESS_TOPIC)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(scheduler: str | None, *, workers: int = 2, memory_limit: str | None = None,
                  threads: int = 1):
    """Without a scheduler :class:`InProcess` (``threads`` 1) or a
    :class:`ThreadPool` of ``threads``; else a :class:`DaskExecutor`."""
    if not scheduler:
        return InProcess() if int(threads) <= 1 else ThreadPool(int(threads))
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
