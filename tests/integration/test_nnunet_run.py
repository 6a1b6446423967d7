"""``nx47 run --model-kind nnunet``: nnU-Net planned, preprocessed and
trained inside the run on demo data, on the CPU (slow: nnU-Net's planning
and a tiny training take a minute).

What a user relies on: the run's events while nnU-Net trains (progress per
iteration, METRIC per epoch, heartbeat, no silence), Stop, the deadline
(fewer epochs, BUDGET ``nnunet_epochs``), ``kill -9`` then a rerun giving
the same submission as a run never stopped (the training continues from
its last epoch), and the run's bundle segmenting read-only input exactly as
the run did (``nx47 run --model <out>/model``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fault_corpus import cli_cmd, journal_dicts, run_cli, run_env
from waits import wait_until

pytest.importorskip("nnunetv2")
pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
#: The run's nnU-Net: NX47's tiny configuration, 3 epochs of 4 iterations.
NNUNET_ARGS = ("--model-kind", "nnunet", "--max-train-volumes", "0", "--max-val-volumes", "2", "--budget-s", "1800",
               "--set", "nnunet_configuration=3d_nx47_tiny", "--set", "nnunet_epochs=3",
               "--set", "nnunet_iterations=4", "--set", "nnunet_val_iterations=1",
               "--set", "progress_interval_s=0")  # every report journalled: one PROGRESS_UPDATE per iteration


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from nx47_pipeline.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("nnunet_run") / "data"
    generate_demo_dataset(root, n_train=6, n_test=2, shape=(48, 48, 48), seed=3)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted run."""
    out = tmp_path_factory.mktemp("nnunet_ref") / "out"
    proc = run_cli(data, out, *NNUNET_ARGS, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _submission(out: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.testzip() is None
        masks = {}
        for name in zf.namelist():
            with zf.open(name) as fh:
                masks[name] = tifffile.imread(fh)
        return masks


def _in(events, stage, kind):
    return [e for e in events if e["stage"] == stage and e["kind"] == kind]


def test_the_run_trains_nnunet_and_reports_every_iteration_and_epoch(reference):
    events = journal_dicts(reference)
    steps = {e["stage"]: e["payload"]["status"] for e in events
             if e["kind"] == "STEP" and e["payload"]["phase"] == "end"}
    assert steps["nnunet"] == "ok" and steps["validate"] == "ok" and steps["segment"] == "ok"
    # the plan is this kind of run's: no linear stage in it
    assert [e["stage"] for e in events if e["kind"] == "STEP" and e["payload"]["phase"] == "begin"] == [
        "discovery", "preflight", "nnunet", "validate", "segment", "package"]
    plan = json.loads((reference / "plan.json").read_text())
    assert [st["name"] for st in plan["stages"]] == ["discovery", "preflight", "nnunet", "validate", "segment",
                                                     "package"]
    # progress per iteration: 3 epochs x 4 iterations, in order, out of 12
    done = [e["payload"]["step_done"] for e in _in(events, "nnunet", "PROGRESS_UPDATE")
            if (e["payload"].get("substep") or "").endswith("iteration")]
    assert sorted(set(done)) == list(range(1, 13)) and done == sorted(done)
    assert {e["payload"]["step_total"] for e in _in(events, "nnunet", "PROGRESS_UPDATE")} == {12}
    metrics = {}
    for e in _in(events, "nnunet", "METRIC"):
        metrics.setdefault(e["payload"]["name"], []).append(e["payload"])
    assert len(metrics["nnunet_batch_loss"]) == 12
    for name in ("nnunet_train_loss", "nnunet_val_loss", "nnunet_pseudo_dice", "nnunet_lr"):
        assert [m["step"] for m in metrics[name]] == [1, 2, 3], name
    lrs = [m["value"] for m in metrics["nnunet_lr"]]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # nnU-Net's polynomial schedule over the 3 epochs
    assert {"val_loss", "pseudo_dice", "lr"} <= set(metrics["nnunet_train_loss"][0]["extra"])
    # the pace measured, the epochs decided: all 3 fit the budget
    dec = [e["payload"] for e in events if e["kind"] == "BUDGET" and e["payload"]["decision"] == "nnunet_epochs"]
    assert len(dec) == 1 and dec[0]["fits"] is True and dec[0]["extra"]["epochs"] == 3
    assert dec[0]["extra"]["seconds_per_window"] > 0 and dec[0]["extra"]["reserve_windows"] > 0
    # never silent: heartbeats while it trains, no gap between progress reports over 5 s
    assert _in(events, "nnunet", "HEARTBEAT")
    times = [e["t"] for e in _in(events, "nnunet", "PROGRESS_UPDATE")]
    assert max(np.diff(times)) < 5.0
    # the run's bundle: the trained nnU-Net and the post-processing chosen on validation
    manifest = json.loads((reference / "model" / "model.json").read_text())
    assert manifest["kind"] == "nnunet" and manifest["postprocess"]["chosen_on_validation"] is True
    record = json.loads((reference / "val" / "model_thresholds.json").read_text())
    assert [manifest["search"]["low"], manifest["search"]["high"]] == record["chosen"]
    assert len(manifest["val_ids"]) == 2 and manifest["validation"]["mean_score"] is not None
    # nnU-Net's folders are the run's, its variables never reached this process
    assert (reference / "nnunet" / "results").is_dir()
    assert not any(k.startswith("nnUNet_") for k in os.environ)


def _trainers_of(out: Path) -> list[int]:
    """Processes whose nnU-Net results folder is ``out``'s."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"nnUNet_results={out / 'nnunet' / 'results'}".encode() in env:
            pids.append(int(proc.name))
    return pids


#: Runs the nx47 command and SIGKILLs its own process at the METRIC of the
#: second epoch (the first epoch's checkpoint is then on disk).
KILLER = """
import os, signal, sys
from nx47_pipeline.telemetry import bus
orig = bus.EventBus.publish
def publish(self, kind, payload, **kw):
    ev = orig(self, kind, payload, **kw)
    if ev is not None and ev.kind.value == "METRIC" and ev.payload.name == "nnunet_train_loss" \\
            and ev.payload.step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return ev
bus.EventBus.publish = publish
from nx47_pipeline.cli.dispatch import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_while_nnunet_trains_then_rerun_gives_the_same_submission(data, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", KILLER] + cli_cmd(data, out, *NNUNET_ARGS)[3:]
    killed = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=1500)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "submission.zip").exists()
    # the trainer died with the run
    wait_until(lambda: not _trainers_of(out), 30, "the killed run's nnU-Net trainer to exit")
    rerun = run_cli(data, out, *NNUNET_ARGS, timeout=1500)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    events = journal_dicts(out)
    starts = [i for i, e in enumerate(events) if e["kind"] == "RUN_START"]
    assert len(starts) == 2
    # the rerun's training continued after the first epoch, it did not start again
    again = [e["payload"]["step_done"] for e in events[starts[1]:]
             if e["stage"] == "nnunet" and e["kind"] == "PROGRESS_UPDATE"
             and (e["payload"].get("substep") or "").endswith("iteration")]
    assert again and min(again) > 4
    ref, got = _submission(reference), _submission(out)
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{name} differs after kill -9 and rerun")


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_the_runs_bundle_segments_read_only_input_as_the_run_did(data, reference, tmp_path):
    ro = tmp_path / "ro"
    shutil.copytree(data, ro)
    _read_only(ro)
    try:
        out = tmp_path / "out"
        proc = run_cli(ro, out, "--model", str(reference / "model"), "--max-val-volumes", "2", "--budget-s", "1800",
                       timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    # its choice is kept, not swept again
    assert not (out / "val" / "model_thresholds.json").exists()
    ref, got = _submission(reference), _submission(out)
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{name}: the bundle segments differently")


def test_stop_while_nnunet_trains_ends_the_run_and_its_trainer(data, tmp_path):
    from sinks import CallbackSink

    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.run.orchestrator import run_pipeline
    from nx47_pipeline.telemetry.cancel import CancelToken
    from nx47_pipeline.telemetry.events import EventKind

    out = tmp_path / "out"
    token, marks = CancelToken(), {}

    def on_event(event):
        if (event.kind is EventKind.METRIC and event.payload.name == "nnunet_batch_loss"
                and "cancel" not in marks):
            marks["cancel"] = time.monotonic()
            token.cancel("test stop while nnU-Net trains")
        if event.kind is EventKind.CANCELLED and "cancelled" not in marks:
            marks["cancelled"] = time.monotonic()

    env = {k: v for k, v in run_env().items() if k.startswith("NX47_")}
    config = RunConfig.from_env(env, data_root=str(data), out_dir=str(out), model_kind="nnunet",
                                nnunet_configuration="3d_nx47_tiny", nnunet_epochs=50, nnunet_iterations=4,
                                nnunet_val_iterations=1, max_train_volumes=0, max_val_volumes=2, budget_s=1800.0,
                                console=False)
    result = {}
    th = threading.Thread(target=lambda: result.update(
        r=run_pipeline(config, cancel=token, extra_sinks=[CallbackSink(on_event)])), daemon=True)
    th.start()
    th.join(1200)
    assert not th.is_alive(), "the run did not end after the stop"
    assert result["r"].status == "cancelled"
    assert marks["cancelled"] - marks["cancel"] < 2.0
    wait_until(lambda: not _trainers_of(out), 10, "the stopped run's nnU-Net trainer to exit")
    assert not (out / "nnunet" / "results" / "Dataset047_Vesuvius" / "nnUNetTrainer_nx47__nnUNetPlans__3d_nx47_tiny"
                / "fold_0" / "checkpoint_final.pth").exists()


def test_a_short_budget_trains_fewer_epochs_and_still_submits(data, tmp_path):
    """300 epochs asked within a 150 s budget (about 1.5 s an epoch of this tiny training here): the trainer measures its pace and the run decides fewer epochs
    (BUDGET nnunet_epochs, fits false), whose learning rate still decays to the last one; the run ends ok
    with a submission before its budget."""
    out = tmp_path / "out"
    args = [a if a != "nnunet_epochs=3" else "nnunet_epochs=300" for a in NNUNET_ARGS]
    args[args.index("--budget-s") + 1] = "150"
    proc = run_cli(data, out, *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = journal_dicts(out)
    dec = [e["payload"] for e in events if e["kind"] == "BUDGET" and e["payload"]["decision"] == "nnunet_epochs"]
    assert len(dec) == 1 and dec[0]["fits"] is False
    epochs = dec[0]["extra"]["epochs"]
    assert 1 <= epochs < 300 and dec[0]["extra"]["asked"] == 300
    trained = [e["payload"]["step"] for e in events if e["kind"] == "METRIC"
               and e["payload"]["name"] == "nnunet_train_loss"]
    assert trained == list(range(1, epochs + 1))  # the shortened schedule ran to its end, within the budget
    assert (out / "submission.zip").is_file()
    done = [e["payload"] for e in events if e["kind"] == "EXEC_COMPLETE"]
    assert done[-1]["status"] == "ok" and done[-1]["duration_s"] <= 150
