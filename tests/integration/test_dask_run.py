"""``nx47 run --scheduler``: per-volume work as tasks on a Dask LocalCluster of
two worker processes gives the in-process masks, progress events name both
workers, a worker killed mid-run is a WARNING and the run still ends with the
same submission, Stop cancels the tasks, and the CLI flags / environment /
notebook parameters reach the configuration."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.run.orchestrator import run_pipeline
from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.telemetry.events import EventKind
from nx47_pipeline.telemetry.journal import read_journal, verify_journal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sinks import CallbackSink  # noqa: E402
from test_pipeline import small_config as pipeline_config  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def small_config(data: Path, out: Path, **kw) -> RunConfig:
    return pipeline_config(data, out, **{"budget_s": 1800.0, "heartbeat_interval_s": 0.5, "stall_after_s": 60.0,
                                         **kw})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask-data")
    generate_demo_dataset(root, n_train=6, n_test=3, shape=48, seed=11)
    return root


@pytest.fixture(scope="module")
def in_process(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("inproc")
    res = run_pipeline(small_config(data_root, out), console_stream=io.StringIO())
    assert res.status == "ok", res.error
    return out


def masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted((out / "test").glob("*.tif")) if "_prob" not in p.name}


def submission_entries(out: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(out / "submission.zip") as z:
        return {n: tifffile.imread(io.BytesIO(z.read(n))) for n in sorted(z.namelist())}


def assert_same_results(a: Path, b: Path) -> None:
    ma, mb = masks(a), masks(b)
    assert ma and sorted(ma) == sorted(mb)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
    sa, sb = submission_entries(a), submission_entries(b)
    assert sorted(sa) == sorted(sb)
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)
    for p in sorted((a / "val").glob("*.json")):
        assert json.loads(p.read_text()) == json.loads((b / "val" / p.name).read_text())


def workers_in(events, stage: str) -> set[str]:
    return {e.payload.worker for e in events
            if e.kind == EventKind.PROGRESS_UPDATE and e.stage == stage and e.payload.worker}


def test_a_local_cluster_of_two_workers_gives_the_in_process_masks_and_events_from_both(
        data_root, in_process, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "dask"
    res = run_pipeline(small_config(data_root, out, scheduler="local", workers=2), console_stream=io.StringIO())
    assert res.status == "ok", res.error
    assert_same_results(in_process, out)
    events = read_journal(out / "journal.jsonl")
    assert verify_journal(out / "journal.jsonl").ok  # the driver stays the journal's only writer
    # 4 training volumes, 2 validation, 3 test: every per-volume stage used both workers
    for stage in ("features", "segment"):
        assert len(workers_in(events, stage)) == 2, (stage, workers_in(events, stage))
    # the in-process run names no worker
    assert not any(e.payload.worker for e in read_journal(in_process / "journal.jsonl")
                   if e.kind == EventKind.PROGRESS_UPDATE)
    cluster = json.loads((out / "cluster.json").read_text())
    assert cluster["closed"] is True and cluster["scheduler"] == "local"
    assert cluster["tasks_done"] >= 4 + 2 + 3 and cluster["tasks_in_flight"] == 0


def test_a_worker_killed_mid_run_is_a_warning_and_the_run_ends_with_the_same_submission(
        data_root, in_process, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        pids = client.run(os.getpid)
        names = {addr: str(w["name"]) for addr, w in client.scheduler_info()["workers"].items()}
        killed: list[str] = []

        def kill_first_worker_seen_in_features(event):
            if (not killed and event.kind == EventKind.PROGRESS_UPDATE and event.stage == "features"
                    and event.payload.worker):
                addr = next(a for a, n in names.items() if n == event.payload.worker)
                killed.append(addr)
                os.kill(pids[addr], signal.SIGKILL)

        out = tmp_path / "killed"
        res = run_pipeline(small_config(data_root, out, scheduler=lc.scheduler_address, workers=2),
                           extra_sinks=[CallbackSink(kill_first_worker_seen_in_features)],
                           console_stream=io.StringIO())
    assert killed, "no worker progress reached the bus during features"
    assert res.status == "ok", res.error
    events = read_journal(out / "journal.jsonl")
    lost = [e for e in events if e.kind == EventKind.WARNING and e.payload.code == "worker_lost"]
    assert lost and lost[0].payload.subject == killed[0] and "run again" in lost[0].payload.message
    assert_same_results(in_process, out)


def test_stop_cancels_the_tasks_on_the_cluster(data_root, tmp_path):
    distributed = pytest.importorskip("distributed")
    from distributed.diagnostics.plugin import WorkerPlugin

    class HoldFeatures(WorkerPlugin):
        """On each worker, a features task reports progress and then waits for
        the test's gate: no volume can be sampled before Stop, however fast
        the machine (the race the test would otherwise depend on)."""

        def setup(self, worker):
            from distributed import Event

            from nx47_pipeline.run import tasks

            original = tasks.features_task

            def held(job, progress=tasks.no_progress):
                progress(job.index, 0, 1, "read", 0.0)
                Event("nx47-test-gate").wait(timeout=120)
                return original(job, progress)

            tasks.features_task = held  # the task function is sent by name: workers now run `held`

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        client.register_plugin(HoldFeatures())
        assert set(client.run(lambda: __import__("nx47_pipeline.run.tasks", fromlist=["_"]).features_task.__name__)
                   .values()) == {"held"}
        gate = distributed.Event("nx47-test-gate", client=client)
        token = CancelToken()

        def stop_at_first_worker_progress(event):
            if event.kind == EventKind.PROGRESS_UPDATE and event.stage == "features" and event.payload.worker:
                token.cancel("user pressed Stop")

        out = tmp_path / "stopped"
        try:
            res = run_pipeline(small_config(data_root, out, scheduler=lc.scheduler_address, workers=2),
                               cancel=token, extra_sinks=[CallbackSink(stop_at_first_worker_progress)],
                               console_stream=io.StringIO())
            assert res.status == "cancelled"
            # nothing of this run is left queued or running on the cluster
            processing = client.run_on_scheduler(lambda dask_scheduler: {
                k: str(ts.state) for k, ts in dask_scheduler.tasks.items() if ts.state in ("processing", "queued",
                                                                                           "waiting", "no-worker")})
            assert processing == {}
            assert list((out / "features").glob("*.npz")) == []  # stopped before any training volume was sampled
        finally:
            gate.set()
    events = read_journal(out / "journal.jsonl")
    assert events[-1].kind == EventKind.EXEC_COMPLETE and str(events[-1].payload.status) == "cancelled"
    assert any(e.kind == EventKind.PROGRESS_UPDATE and e.stage == "features" and e.payload.worker for e in events)


def test_scheduler_and_workers_come_from_flags_environment_and_notebook_parameters(monkeypatch):
    from nx47_pipeline.cli.dispatch import build_parser
    from nx47_pipeline.cli.run import config_from_args
    from nx47_widgets.notebook import config_from_parameters

    args = build_parser().parse_args(["run", "--scheduler", "tcp://10.1.2.3:8786", "--workers", "16"])
    cfg = config_from_args(args)
    assert (cfg.scheduler, cfg.workers) == ("tcp://10.1.2.3:8786", 16)
    env = {"NX47_SCHEDULER": "local", "NX47_WORKERS": "3"}
    cfg = RunConfig.from_env(env)
    assert (cfg.scheduler, cfg.workers) == ("local", 3)
    cfg = config_from_parameters(scheduler="tcp://h:1", workers=4, environ=env)
    assert (cfg.scheduler, cfg.workers) == ("tcp://h:1", 4)
    assert RunConfig().scheduler == ""  # default: in process
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        RunConfig(workers=0)


def test_an_unreachable_scheduler_is_an_error_naming_it_and_the_run_ends_in_process(data_root, tmp_path):
    pytest.importorskip("distributed")
    from nx47_pipeline.run import executor

    class Refused(executor.DaskExecutor):
        def __init__(self, scheduler, **kw):
            raise OSError(f"Timed out trying to connect to {scheduler}")

    out = tmp_path / "unreachable"
    mp = pytest.MonkeyPatch()
    mp.setattr(executor, "DaskExecutor", Refused)
    try:
        res = run_pipeline(small_config(data_root, out, scheduler="tcp://127.0.0.1:9", max_val_volumes=1,
                                        max_train_volumes=2), console_stream=io.StringIO())
    finally:
        mp.undo()
    assert res.status == "ok" and (out / "submission.zip").exists()
    errors = [e for e in read_journal(out / "journal.jsonl") if e.kind == EventKind.ERROR]
    assert any(e.payload.code == "scheduler_unavailable" and "tcp://127.0.0.1:9" in e.payload.message
               for e in errors)


def test_the_projection_shares_per_volume_stages_between_workers():
    from nx47_pipeline.run.budget import PreflightTimings, project_run

    fields = {f: 1.0 for f in PreflightTimings.__dataclass_fields__}
    timings = PreflightTimings(**fields)
    one = project_run(timings, n_train=8, n_val=4, n_test=6, config=RunConfig())
    four = project_run(timings, n_train=8, n_val=4, n_test=6, config=RunConfig(scheduler="local", workers=4))
    for stage in ("features", "validate", "segment"):
        assert four.per_stage[stage] < one.per_stage[stage]
    assert four.per_stage["features"] == pytest.approx(one.per_stage["features"] / 4)
    assert four.per_stage["segment"] == pytest.approx(one.per_stage["segment"] * 2 / 6)  # ceil(6 / 4) = 2
    assert four.per_stage["fit_prox"] == one.per_stage["fit_prox"]  # one fit on the driver either way


def test_without_a_scheduler_the_run_never_imports_dask(data_root, tmp_path):
    import subprocess

    code = (
        "import sys\n"
        "from nx47_pipeline.config import RunConfig\n"
        "from nx47_pipeline.run.orchestrator import run_pipeline\n"
        f"cfg = RunConfig(data_root={str(data_root)!r}, out_dir={str(tmp_path / 'o')!r}, max_train_volumes=2,\n"
        "                max_val_volumes=1, console=False, use_unet=False, samples_per_class=2000,\n"
        "                search_max_iter=20, fit_max_iter=40, l1_grid=(1e-3,), l2_grid=(1e-3,))\n"
        "res = run_pipeline(cfg)\n"
        "assert res.status == 'ok', res.error\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'dask_image')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "o" / "cluster.json").exists()
