"""Runners and the UI pump: threaded jobs, detached processes followed through
their journal, rate-bounded pumping, headless detection."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.config import RunConfig
from nx47_pipeline.telemetry.events import (
    EventKind,
    MessagePayload,
    ProgressPayload,
    RunStartPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_pipeline.cli.dispatch import build_parser
from nx47_pipeline.cli.run import config_from_args
from nx47_pipeline.io.jsonio import read_json
from nx47_pipeline.run.resume import FolderBusy, pid_alive, read_lock_pid
from nx47_widgets.notebook import config_from_parameters, is_headless, should_autorun
from nx47_widgets.detached import DetachedRunner
from nx47_widgets.pump import UIPump
from nx47_widgets.threaded import ThreadedRunner
from waits import wait_until  # noqa: E402


def test_threaded_runner_reports_a_crashing_job_as_events():
    def job(config, cancel, sink):
        raise ValueError("boom in features")

    r = ThreadedRunner(RunConfig(), job=job).start()
    assert r.join(5)
    events = r.drain()
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.ERROR, EventKind.EXEC_COMPLETE]
    assert "boom in features" in events[0].payload.message
    assert events[1].payload.status == "failed"
    assert isinstance(r.error, ValueError) and "boom in features" in r.error_text
    with pytest.raises(RuntimeError, match="already started"):
        r.start()


def test_threaded_runner_runs_off_the_calling_thread():
    seen = {}

    def job(config, cancel, sink):
        seen["thread"] = threading.current_thread().name
        return 42

    r = ThreadedRunner(RunConfig(), job=job).start()
    assert r.join(5) and r.result == 42
    assert seen["thread"] == "nx47-pipeline" != threading.current_thread().name


def test_a_detached_run_is_started_with_its_config_file_and_no_config_variables(tmp_path, monkeypatch):
    # a stand-in interpreter records the command line and the environment it was given
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\nenv > "$0.env"\n')
    fake.chmod(0o755)
    cfg = RunConfig(data_root="/d", out_dir=str(tmp_path / "out"), max_train_volumes=3, max_val_volumes=0,
                    budget_s=123.5, use_unet=None, auto_coverage=True,
                    feature_scales=(1.0, 3.0), closing_radius=(1, 1, 2))
    env = {"PATH": os.environ.get("PATH", ""), "NX47_BUDGET_S": "5", "NX47_USE_UNET": "1",
           "V138_MAX_TRAIN_VOLUMES": "9", "NX47_AUTO_RUN": "0"}
    launched = DetachedRunner.launch(cfg, env=env, python=str(fake), extra_args=["--quiet"])
    assert launched.process.wait(10) == 0
    config_file = tmp_path / "out" / "config.json"
    argv = Path(f"{fake}.argv").read_text().splitlines()
    assert argv == ["-m", "nx47_pipeline.cli", "run", "--config", str(config_file), "--quiet"]
    child_env = dict(line.split("=", 1) for line in Path(f"{fake}.env").read_text().splitlines() if "=" in line)
    assert not {"NX47_BUDGET_S", "NX47_USE_UNET", "V138_MAX_TRAIN_VOLUMES"} & set(child_env)
    assert child_env["NX47_AUTO_RUN"] == "0"  # not a configuration field: left alone
    assert RunConfig.from_dict(read_json(config_file)) == cfg
    # what nx47 run makes of it, whatever this process's environment says
    monkeypatch.setenv("NX47_BUDGET_S", "5")
    monkeypatch.setenv("NX47_USE_UNET", "1")
    assert config_from_args(build_parser().parse_args(argv[2:5])) == cfg


def test_a_detached_launch_into_a_held_folder_leaves_its_config_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.lock").write_text(str(os.getpid()))  # held by a live process: this one
    (out / "config.json").write_text('{"seed": 1}')
    with pytest.raises(FolderBusy):
        DetachedRunner.launch(RunConfig(out_dir=str(out)), python="/nonexistent/python")
    assert (out / "config.json").read_text() == '{"seed": 1}'


def test_lock_pid_and_liveness(tmp_path):
    assert read_lock_pid(tmp_path) is None
    (tmp_path / "run.lock").write_text(f"{os.getpid()}\n")
    assert read_lock_pid(tmp_path) == os.getpid() and pid_alive(os.getpid())
    (tmp_path / "run.lock").write_text('{"pid": 12, "host": "x"}')
    assert read_lock_pid(tmp_path) == 12
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    (tmp_path / "run.lock").write_text("garbage")
    assert read_lock_pid(tmp_path) is None


def test_detached_runner_follows_a_journal_being_written(tmp_path):
    out = tmp_path / "run"
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    follower = DetachedRunner(out)
    assert follower.drain() == []  # no journal yet
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="x", out_dir=str(out), pid=1))
    first = follower.drain()
    assert [e.kind for e in first] == [EventKind.RUN_START]
    for i in range(5):
        bus.publish(EventKind.PROGRESS_UPDATE, ProgressPayload(
            step="s", step_index=0, step_count=1, step_done=i, step_total=5, global_=i / 5))
    # a torn (incomplete) last line is held back until its newline arrives
    with open(out / "journal.jsonl", "ab") as fh:
        fh.write(b'{"seq": 99, "kind": "WARN')
    events = follower.drain()
    assert [e.payload.step_done for e in events] == [0, 1, 2, 3, 4]
    assert not follower.finished
    assert not follower.running  # no run.lock: nothing alive


def test_ui_pump_flushes_at_a_bounded_rate_and_survives_view_errors():
    produced = []
    lock = threading.Lock()

    def source():
        with lock:
            out, produced[:] = list(produced), []
        return out

    batches = []

    def flush(events, tick):
        batches.append(len(events))
        if len(batches) == 3:
            raise RuntimeError("view bug")

    pump = UIPump(source, flush, interval=0.1, tick_s=100.0).start()
    bus = EventBus()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        ev = bus.publish(EventKind.WARNING, MessagePayload(message="m"))
        with lock:
            produced.append(ev)
        time.sleep(0.001)  # the producer's pace: a second of events, the span the rate bound is about
    wait_until(lambda: pump.events == bus.next_seq, 10, "the pump to pass every event")
    pump.stop()
    elapsed = time.monotonic() - t0
    assert pump.alive is False
    assert len(batches) <= elapsed / 0.1 + 2
    assert sum(batches) == pump.events == bus.next_seq  # nothing lost
    assert len(pump.errors) == 1 and "view bug" in pump.errors[0]
    with pytest.raises(ValueError, match="interval"):
        UIPump(source, flush, interval=0)


def test_headless_detection_rules():
    assert is_headless({}) is True  # papermill / nbclient: no front end
    assert is_headless({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}) is True
    assert is_headless({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}) is False
    assert is_headless({"VOILA_KERNEL_ID": "abc"}) is False
    assert is_headless({"JPY_SESSION_NAME": "/x/dashboard.ipynb"}) is False
    assert is_headless({"JPY_SESSION_NAME": "x", "NX47_AUTO_RUN": "1"}) is True
    assert should_autorun(False, {}) is False and should_autorun(True, {"VOILA_KERNEL_ID": "a"})


def test_notebook_parameters_fall_back_to_environment():
    env = {"NX47_DATA_ROOT": "/env/data", "NX47_OUT_DIR": "/env/out", "NX47_USE_UNET": "0",
           "NX47_MAX_TRAIN_VOLUMES": "5"}
    cfg = config_from_parameters(environ=env)
    assert (cfg.data_root, cfg.out_dir, cfg.use_unet, cfg.max_train_volumes) == (
        "/env/data", "/env/out", False, 5)
    cfg = config_from_parameters(data_root="/p", max_train_volumes=0, budget_s=60.0,
                                 use_unet=True, environ=env)
    assert (cfg.data_root, cfg.max_train_volumes, cfg.budget_s, cfg.use_unet) == (
        "/p", 0, 60.0, True)
    with pytest.raises(ValueError, match="max_train_volumes"):
        config_from_parameters(max_train_volumes=-1, environ={})


# ---------------------------------------------------------------------------
# With the real pipeline
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from nx47_pipeline.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("rundata")
    generate_demo_dataset(root, n_train=4, n_test=1, shape=40, seed=2)
    return root


def _wait_for(drain, pred, timeout):
    seen = []

    def matched() -> bool:
        seen.extend(drain())
        return any(pred(e) for e in seen)

    try:
        wait_until(matched, timeout, "a matching event")
    except AssertionError:
        raise AssertionError(f"no matching event within {timeout} s; kinds {[e.kind.value for e in seen]}") from None
    return seen


@pytest.mark.timeout(120)
def test_stop_cancels_the_real_pipeline_within_two_seconds(tmp_path, small_data):
    cfg = RunConfig(data_root=str(small_data), out_dir=str(tmp_path / "out"), use_unet=False,
                    heartbeat_interval_s=1.0, console=False, search_max_iter=400,
                    fit_max_iter=2000, max_train_volumes=3, max_val_volumes=1)
    r = ThreadedRunner(cfg).start()
    seen = _wait_for(r.drain, lambda e: e.kind is EventKind.STEP and e.stage == "preflight"
                     and e.payload.phase == "begin", 90)
    # in the middle of the preflight's computations: one of its phases reports its work
    def working(e) -> bool:
        return e.kind is EventKind.PROGRESS_UPDATE and e.stage == "preflight" and bool(e.payload.substep)
    if not any(working(e) for e in seen):
        _wait_for(r.drain, working, 90)
    assert r.running
    r.stop("test pressed Stop")
    assert r.join(2.0), "the pipeline did not stop within 2 s"
    assert r.stop_latency_s < 2.0
    seen += r.drain()
    done = [e for e in seen if e.kind is EventKind.EXEC_COMPLETE]
    assert done and done[-1].payload.status == "cancelled"
    assert r.result.status == "cancelled"


@pytest.mark.timeout(120)
def test_detached_run_survives_its_launcher_and_stops_on_sigterm(tmp_path, small_data):
    cfg = RunConfig(data_root=str(small_data), out_dir=str(tmp_path / "out"), use_unet=False,
                    heartbeat_interval_s=1.0, search_max_iter=400, fit_max_iter=2000,
                    max_train_volumes=3, max_val_volumes=1)
    launched = DetachedRunner.launch(cfg)
    try:
        _wait_for(launched.drain, lambda e: e.kind is EventKind.HEARTBEAT, 60)
        # a new dashboard (after a page reload) attaches through run.lock + journal
        attached = DetachedRunner(tmp_path / "out")
        assert attached.pid == launched.pid and attached.running
        replay = attached.drain()
        assert replay[0].kind is EventKind.RUN_START and replay[0].payload.pid == launched.pid
        attached.stop("test pressed Stop")
        assert launched.process.wait(10) is not None
        rest = _wait_for(attached.drain, lambda e: e.kind is EventKind.EXEC_COMPLETE, 5)
        assert [e for e in rest if e.kind is EventKind.EXEC_COMPLETE][-1].payload.status \
            == "cancelled"
        assert attached.finished and not attached.running
    finally:
        if launched.process.poll() is None:
            launched.process.kill()
            launched.process.wait(5)


def _looping_job(started):
    def job(config, cancel, sink):
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.out_dir) / "run.lock").write_text(str(os.getpid()))
        try:
            started.set()
            cancel.wait()  # until Stop
            return cancel.reason
        finally:
            (Path(config.out_dir) / "run.lock").unlink()
    return job


def test_a_threaded_run_is_registered_and_stopped_by_another_pages_request(tmp_path, monkeypatch):
    from nx47_widgets.lifecycle import holder, request_stop, threaded_runs_of

    monkeypatch.setenv("NX47_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "out"
    started = threading.Event()
    r = ThreadedRunner(RunConfig(out_dir=str(out)), job=_looping_job(started)).start()
    assert started.wait(5)
    assert threaded_runs_of(os.getpid()) == [str(out.resolve())]
    h = holder(out)
    assert h is not None and h.threaded and h.pid == os.getpid()
    t0 = time.monotonic()
    request_stop(out, "stopped from another page")  # what a re-attached page writes
    assert r.join(2.0) and time.monotonic() - t0 < 2.0
    assert r.result == "stopped from another page"
    assert threaded_runs_of(os.getpid()) == [] and holder(out) is None
    assert not (out / "stop_request.json").exists()


def test_a_kernel_shutting_down_cancels_its_threaded_runs(tmp_path, monkeypatch):
    from nx47_widgets import threaded as threaded_mod

    monkeypatch.setenv("NX47_STATE_DIR", str(tmp_path / "state"))
    started = threading.Event()
    r = ThreadedRunner(RunConfig(out_dir=str(tmp_path / "out")), job=_looping_job(started)).start()
    assert started.wait(5)
    threaded_mod._cancel_threaded_runs_at_exit()  # what atexit runs when the kernel exits
    assert r.done and "shutting down" in r.result
