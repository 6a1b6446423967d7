"""Per-volume tasks on threads of the run's process (``--threads``): they
overlap, their progress reaches the driver's thread only, results keep their
index, and a stop leaves no task running on."""

from __future__ import annotations

import threading

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.run.executor import InProcess, ThreadPool, local_threads, make_executor
from nx47_pipeline.telemetry.cancel import Cancelled

WAIT_S = 30  # a bound for waits that end as soon as their condition holds


def test_tasks_overlap_and_progress_reaches_the_driver_thread_only():
    barrier = threading.Barrier(2, timeout=WAIT_S)  # both tasks must be running at once to pass it
    seen_threads = set()

    def task(item, progress):
        progress(item, 0, 2, "start", 0.0)
        barrier.wait()
        progress(item, 1, 2, "half", 0.5)
        return item * 10

    def on_progress(index, done, total, what, frac, worker):
        seen_threads.add(threading.get_ident())

    got = dict(ThreadPool(2).map(task, [3, 4], on_progress=on_progress))
    assert got == {0: 30, 1: 40}  # index of the item, whatever the completion order
    assert seen_threads == {threading.get_ident()}


def test_a_stop_cancels_tasks_not_started_and_stops_running_ones_at_their_next_report():
    started, finished = [], []
    release = threading.Event()
    first_running = threading.Event()

    def task(item, progress):
        started.append(item)
        first_running.set()
        release.wait(WAIT_S)
        progress(item, 1, 2, "after the stop", 0.5)  # raises Cancelled once the driver has left
        finished.append(item)
        return item

    def check():
        if first_running.is_set():
            raise Cancelled("Stop")

    pool = ThreadPool(1)
    with pytest.raises(Cancelled):
        for _ in pool.map(task, [0, 1, 2], on_progress=lambda *a: None, check=check):
            pass
    release.set()
    for t in [t for t in threading.enumerate() if t.name.startswith("nx47-task")]:
        t.join(WAIT_S)
    assert started == [0] and finished == []  # items 1 and 2 never started; item 0 stopped at its report


def test_task_errors_reach_the_driver():
    def task(item):
        raise ValueError(f"volume {item}: unreadable")

    with pytest.raises(ValueError, match="volume 0: unreadable"):
        list(ThreadPool(2).map(task, [0]))


def test_threads_setting():
    assert local_threads(3) == 3 and local_threads(1) == 1
    assert 1 <= local_threads(0) <= 2
    with pytest.raises(ValueError, match="threads"):
        local_threads(-1)
    with pytest.raises(ValueError, match="threads must be an integer >= 0"):
        RunConfig(threads=-2)
    assert isinstance(make_executor(None, threads=1), InProcess)
    assert make_executor(None, threads=2).workers == 2
    assert RunConfig.from_env({"NX47_THREADS": "1"}).threads == 1
