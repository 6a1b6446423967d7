"""cluster.json, the file the dashboard's Dask panel reads: worker facts from
the scheduler, task counts from the executor, rewritten on a clock, closed at
the end, a failing scheduler query keeps the last snapshot."""

import json
import threading

import pytest

from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.run.cluster import ClusterMonitor

INFO = {"workers": {
    "tcp://127.0.0.1:2": {"name": 1, "nthreads": 1, "memory_limit": 1_000_000_000,
                          "metrics": {"memory": 412_000_000, "task_counts": {"executing": 1}}},
    "tcp://127.0.0.1:1": {"name": 0, "nthreads": 1, "memory_limit": 1_000_000_000,
                          "metrics": {"memory": 65_000_000, "task_counts": {}}},
}}


def test_snapshot_names_each_worker_with_memory_and_tasks(tmp_path):
    counts = [(3, 10)]
    mon = ClusterMonitor(tmp_path, info=lambda: INFO, counts=lambda: counts[0], scheduler="local",
                         dashboard_link="http://127.0.0.1:8787/status", clock=lambda: 100.0)
    mon.write()
    doc = json.loads(RunFolder(tmp_path).cluster.read_text())
    assert [w["address"] for w in doc["workers"]] == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    busy = doc["workers"][1]
    assert (busy["name"], busy["memory_bytes"], busy["memory_limit"], busy["tasks_processing"]) == \
        ("1", 412_000_000, 1_000_000_000, 1)
    assert (doc["tasks_in_flight"], doc["tasks_done"], doc["updated"], doc["closed"]) == (3, 10, 100.0, False)


def test_a_failing_scheduler_query_keeps_the_last_snapshot_and_close_marks_it_closed(tmp_path):
    calls = {"n": 0}

    def info():
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("scheduler gone")
        return INFO

    mon = ClusterMonitor(tmp_path, info=info, counts=lambda: (2, 5), scheduler="tcp://s:8786",
                         dashboard_link="", clock=lambda: 1.0)
    mon.write()
    mon.write()
    assert len(json.loads(RunFolder(tmp_path).cluster.read_text())["workers"]) == 2
    mon.close()
    doc = json.loads(RunFolder(tmp_path).cluster.read_text())
    assert doc["closed"] is True and doc["tasks_in_flight"] == 0 and doc["tasks_done"] == 5


def test_the_thread_rewrites_the_file_every_interval(tmp_path):
    ticks = []
    seen = threading.Event()

    def counts():
        ticks.append(1)
        if len(ticks) >= 3:
            seen.set()
        return (len(ticks), 0)

    mon = ClusterMonitor(tmp_path, info=lambda: INFO, counts=counts, scheduler="local", dashboard_link="",
                         interval_s=0.01).start()
    assert seen.wait(5)
    mon.close()
    assert json.loads(RunFolder(tmp_path).cluster.read_text())["closed"] is True


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="interval_s"):
        ClusterMonitor(tmp_path, info=dict, counts=lambda: (0, 0), scheduler="local", dashboard_link="",
                       interval_s=0)
