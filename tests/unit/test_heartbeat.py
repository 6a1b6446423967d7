"""Heartbeat classification, with a fake clock and on real threads."""

import threading

import numpy as np
import pytest

from nx47_pipeline.telemetry.events import WorkerState
from nx47_pipeline.telemetry import heartbeat
from nx47_pipeline.telemetry.heartbeat import HeartbeatMonitor, thread_cpu_clock


class Fake:
    def __init__(self):
        self.t = 0.0
        self.worker_cpu = 0.0
        self.proc_cpu = 0.0


def fake_monitor(f, published=None, **kw):
    published = [] if published is None else published
    mon = HeartbeatMonitor(
        lambda p, s: published.append((p, s)),
        interval_s=10.0,
        clock=lambda: f.t,
        thread_cpu=lambda: f.worker_cpu,
        process_cpu=lambda: f.proc_cpu,
        **kw,
    )
    return mon, published


def test_fake_clock_classification_sequence():
    f = Fake()
    mon, pub = fake_monitor(f, budget_left=lambda: 3600.0 - f.t, stage=lambda: "features")
    f.t = 10.0
    mon.notify_progress()
    f.t = 14.0
    assert mon.beat().state == "ACTIVE"
    # 20 s (= stall_after) without progress, worker thread CPU busy
    f.t = 30.0
    f.worker_cpu += 10.0
    p = mon.beat()
    assert p.state == "COMPUTING" and p.since_progress_s == 20.0
    f.t = 40.0
    f.worker_cpu += 9.0
    assert mon.beat().state == "COMPUTING"
    # pool threads busy while the worker thread itself waits for them
    f.t = 50.0
    f.proc_cpu += 15.0
    assert mon.beat().state == "COMPUTING"
    f.t = 60.0  # nothing moves
    p = mon.beat()
    assert p.state == "STALLED" and p.elapsed_s == 60.0 and p.budget_left_s == 3540.0
    assert pub[-1][1] == "features"
    mon.notify_progress()
    f.t = 61.0
    assert mon.beat().state == "ACTIVE"
    mon.set_final(WorkerState.FINISHED)
    assert mon.beat().state == "FINISHED"


def test_active_only_while_the_last_progress_is_younger_than_the_gap():
    """ACTIVE means progress within ``active_within_s`` (the run's progress_max_gap_s):
    a beat never says ACTIVE beside "no progress for 16 s"."""
    f = Fake()
    mon, _ = fake_monitor(f, stall_after_s=60.0, active_within_s=5.0)
    f.t = 4.9
    assert mon.beat().state == "ACTIVE"
    f.t = 16.0
    f.worker_cpu += 10.0
    p = mon.beat()
    assert p.state == "COMPUTING" and p.since_progress_s == 16.0 and "CPU busy" in p.message
    f.t = 26.0  # no CPU either, but shorter than stall_after_s: still computing, and it says idle
    p = mon.beat()
    assert p.state == "COMPUTING" and "CPU idle" in p.message
    f.t = 61.0
    assert mon.beat().state == "STALLED"
    mon.notify_progress()
    f.t = 62.0
    assert mon.beat().state == "ACTIVE"


def test_active_window_defaults_and_validation():
    assert HeartbeatMonitor(lambda p, s: None, interval_s=15.0).active_within_s == 5.0
    assert HeartbeatMonitor(lambda p, s: None, interval_s=0.25).active_within_s == 0.5
    with pytest.raises(ValueError, match="active_within_s"):
        HeartbeatMonitor(lambda p, s: None, active_within_s=0)


def test_cpu_pct_is_process_cpu_over_the_window():
    f = Fake()
    mon, _ = fake_monitor(f)
    f.t = 10.0
    f.proc_cpu = 15.0
    assert mon.beat().cpu_pct == pytest.approx(150.0)


def test_set_final_rejects_live_states():
    mon, _ = fake_monitor(Fake())
    with pytest.raises(ValueError, match="ACTIVE"):
        mon.set_final("ACTIVE")


def test_bad_interval_is_named():
    with pytest.raises(ValueError, match="interval_s"):
        HeartbeatMonitor(lambda p, s: None, interval_s=0)


def test_injected_wait_drives_the_loop_and_stop_ends_it():
    f = Fake()
    calls = []
    beats = threading.Event()

    def wait(timeout):
        calls.append(timeout)
        if len(calls) >= 3:
            beats.set()
            mon._stop.wait(5)
            return True
        return False

    pub = []
    mon = HeartbeatMonitor(lambda p, s: pub.append(p), interval_s=7.0, clock=lambda: f.t,
                           wait=wait, thread_cpu=lambda: 0.0, process_cpu=lambda: 0.0)
    mon.start()
    assert beats.wait(5)
    mon.stop()
    assert calls == [7.0, 7.0, 7.0] and len(pub) == 2 and not mon.running


# ------------------------------------------------------------- real threads
INTERVAL = 0.25


def run_with_monitor(target, n_beats, *, unblock=lambda: None, **kw):
    """Run ``target(stop_event, mon)`` in a worker thread while a real monitor
    watches it; return the states of the first ``n_beats`` beats."""
    states = []
    got = threading.Event()
    stop = threading.Event()

    def publish(payload, stage):
        states.append(payload.state)
        if len(states) >= n_beats:
            got.set()

    holder = {}
    ready = threading.Event()

    def worker():
        ready.wait(5)
        target(stop, holder["mon"])

    w = threading.Thread(target=worker, daemon=True)
    w.start()
    mon = HeartbeatMonitor(publish, interval_s=INTERVAL, worker_thread=w, **kw)
    holder["mon"] = mon
    mon.start()
    ready.set()
    assert got.wait(20 * INTERVAL * n_beats), states
    mon.stop()
    stop.set()
    unblock()
    w.join(5)
    return states[:n_beats]


def test_numpy_loop_without_progress_is_computing():
    a = np.random.default_rng(0).random((200, 200))

    def busy(stop, mon):
        while not stop.is_set():
            np.linalg.svd(a)

    states = run_with_monitor(busy, 4)
    assert states[0] == "ACTIVE"  # less than stall_after since start
    assert states[2:] == ["COMPUTING", "COMPUTING"]
    assert "STALLED" not in states


def test_thread_blocked_on_lock_is_stalled_within_two_intervals():
    lock = threading.Lock()
    lock.acquire()

    def blocked(stop, mon):
        lock.acquire(timeout=10)

    states = run_with_monitor(blocked, 2, unblock=lock.release)
    assert states[1] == "STALLED"


def test_sleeping_thread_is_stalled_within_two_intervals():
    def sleeper(stop, mon):
        stop.wait(10)

    states = run_with_monitor(sleeper, 3)
    assert states[1:] == ["STALLED", "STALLED"]


def test_loop_reporting_progress_is_active():
    def reporting(stop, mon):
        while not stop.wait(0.02):  # a step of work, then its report
            mon.notify_progress()

    states = run_with_monitor(reporting, 4)
    assert states == ["ACTIVE"] * 4


def test_thread_cpu_clock_reads_a_live_thread():
    read = thread_cpu_clock()
    assert read is not None
    t0 = read()
    x = 0
    for i in range(200000):
        x += i
    assert read() > t0


def test_worker_waiting_on_pool_threads_is_computing(monkeypatch):
    """The worker thread sleeps in join() while other threads of the process
    compute for it (as BLAS / OpenMP / torch pools do): process CPU counts.
    The threshold is lowered so that a test machine loaded by other processes
    (where the pool thread may get a small share of a core) still qualifies."""
    monkeypatch.setattr(heartbeat, "PROCESS_CPU_FRAC", 0.05)
    a = np.random.default_rng(0).random((200, 200))

    def waits_for_pool(stop, mon):
        def pool():
            while not stop.is_set():
                np.linalg.svd(a)

        p = threading.Thread(target=pool, daemon=True)
        p.start()
        p.join()

    states = run_with_monitor(waits_for_pool, 4)
    assert states[2:] == ["COMPUTING", "COMPUTING"]
