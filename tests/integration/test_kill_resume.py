"""Kill, resume, full disk, stop and budget: a run survives what real runs meet.

Fast cases (CI): the submission writer under a full disk (an injected ENOSPC
and a real file-size limit in a subprocess).  Slow cases (``-m slow``): full
pipeline runs killed with SIGKILL at each stage and rerun, stopped with the
cancel token during each stage, run out of disk, and swept over tiny budgets.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[2]

from fault_corpus import build_clean_root, journal_dicts, run_env, synthetic_pair, write_tif  # noqa: E402


def _masks(tmp_path: Path, ids: list[str]) -> list[tuple[str, Path]]:
    out = []
    for i, vid in enumerate(ids):
        p = tmp_path / "test" / f"{vid}.tif"
        _, lab = synthetic_pair((32, 32, 32), seed=100 + i)
        write_tif(p, (lab == 1).astype(np.uint8))
        out.append((vid, p))
    return out


def _zip_ok(path: Path, ids: list[str]) -> None:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(f"{v}.tif" for v in ids)


# ----------------------------------------------------------------------
# Full disk: the submission writer (fast)
# ----------------------------------------------------------------------
def test_enospc_while_zipping_leaves_previous_zip_untouched(tmp_path, monkeypatch):
    from nx47_pipeline.io import submission as package

    masks = _masks(tmp_path, ["1001", "1002", "1003"])
    final = tmp_path / "submission.zip"
    package.write_submission(masks[:2], final)
    before = final.read_bytes()

    real_write = zipfile.ZipFile.write
    calls = {"n": 0}

    def full_disk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    with pytest.raises(package.PackagingError) as info:
        package.write_submission(masks, final)
    assert "submission.zip" in str(info.value)
    assert "No space left" in str(info.value)
    # the previous complete submission is still there, byte for byte
    assert final.read_bytes() == before
    _zip_ok(final, ["1001", "1002"])
    # no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.zip", "test"]


def test_real_file_size_limit_gives_clean_error_and_no_zip(tmp_path):
    """A genuine write failure (RLIMIT_FSIZE, i.e. EFBIG from the kernel) in a
    subprocess: the writer reports it, and no zip exists at the final path."""
    masks = _masks(tmp_path, ["2001", "2002"])
    # incompressible masks so the zip must exceed the limit
    rng = np.random.default_rng(0)
    for _, p in masks:
        tifffile.imwrite(p, rng.integers(0, 2, size=(32, 64, 64), dtype=np.uint8))
    final = tmp_path / "out" / "submission.zip"
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from nx47_pipeline.io import submission as package
        masks = {[(v, str(p)) for v, p in masks]!r}
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
        try:
            package.write_submission([(v, Path(p)) for v, p in masks], {str(final)!r})
        except package.PackagingError as exc:
            print("PACKAGING_ERROR", exc)
            sys.exit(3)
        print("NO_ERROR")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "PACKAGING_ERROR" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir()] == []


# ----------------------------------------------------------------------
# Full pipeline runs (slow): kill -9 and resume, stop per stage, full disk,
# budget sweep.  A tiny clean data root, 32^3 volumes.
# ----------------------------------------------------------------------
from fault_corpus import cli_cmd, read_masks, run_cli, step_begins  # noqa: E402

KILL_STAGES = ["features", "search", "fit_prox", "unet", "segment", "package"]
CANCEL_STAGES = ["discovery", "preflight", "features", "search", "fit_prox", "unet",
                 "validate", "segment", "package"]
RUN_ARGS = ("--unet", "--max-train-volumes", "4", "--max-val-volumes", "2", "--budget-s", "1800")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    return build_clean_root(tmp_path_factory.mktemp("clean data ü"))


@pytest.fixture(scope="module")
def reference(clean_root, tmp_path_factory):
    """One uninterrupted run: the masks every interrupted run must reproduce."""
    data, _, test_ids = clean_root
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = run_cli(data, out, *RUN_ARGS, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    masks = read_masks(out / "test")
    assert sorted(masks) == sorted(test_ids)
    return out, masks


def _assert_journal_verifies(out: Path, *, allow_torn: bool) -> None:
    from nx47_pipeline.telemetry.journal import verify_journal

    res = verify_journal(out / "journal.jsonl")
    assert res.ok, f"journal does not verify: line {res.bad_line}: {res.reason}"
    if not allow_torn:
        assert not res.torn_tail, res.reason


def _assert_no_partial_files(out: Path) -> None:
    """Every file at a final name is complete; no temporary is left at a final name."""
    from nx47_pipeline.io.volumes import read_header

    for p in out.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue  # temporaries are hidden and never read as results
        if p.suffix == ".tif":
            read_header(p)  # raises VolumeError on a truncated file
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                assert zf.testzip() is None


#: Runs the nx47 command and SIGKILLs its own process at the Nth
#: PROGRESS_UPDATE published in stage KILL_STAGE: a kill at a known point
#: inside the stage (for ``package``: with the zip half-written).
KILLER = """
import os, signal, sys
from nx47_pipeline.telemetry import bus
stage, after = os.environ["KILL_STAGE"], int(os.environ.get("KILL_AFTER", "2"))
orig, seen = bus.EventBus.publish, [0]
def publish(self, kind, payload, **kw):
    ev = orig(self, kind, payload, **kw)
    if ev is not None and ev.stage == stage and ev.kind.value == "PROGRESS_UPDATE":
        seen[0] += 1
        if seen[0] >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    return ev
bus.EventBus.publish = publish
from nx47_pipeline.cli.dispatch import main
sys.exit(main(sys.argv[1:]))
"""


#: Stages whose kill test also runs in CI (the rest are behind ``-m slow``).
FAST_KILL_STAGES = {"search", "segment"}


@pytest.mark.parametrize("stage", [
    s if s in FAST_KILL_STAGES else pytest.param(s, marks=pytest.mark.slow) for s in KILL_STAGES
])
def test_sigkill_during_stage_then_rerun_gives_the_same_masks(clean_root, reference, tmp_path, stage):
    data, _, test_ids = clean_root
    ref_out, ref_masks = reference
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", KILLER] + cli_cmd(data, out, *RUN_ARGS)[3:]
    killed = subprocess.run(cmd, cwd=REPO, env=run_env(KILL_STAGE=stage), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, (
        f"the run was not killed inside {stage} (exit {killed.returncode}): "
        + killed.stderr[-2000:]
    )
    assert stage in step_begins(journal_dicts(out))
    _assert_journal_verifies(out, allow_torn=True)
    _assert_no_partial_files(out)
    assert not (out / "submission.zip").exists()

    rerun = run_cli(data, out, *RUN_ARGS, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    _assert_journal_verifies(out, allow_torn=False)
    masks = read_masks(out / "test")
    assert sorted(masks) == sorted(ref_masks)
    for vid, ref in ref_masks.items():
        np.testing.assert_array_equal(masks[vid], ref, err_msg=f"mask {vid} differs after resume")
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(f"{t}.tif" for t in test_ids)
        for t in test_ids:
            with zf.open(f"{t}.tif") as fh:
                np.testing.assert_array_equal(tifffile.imread(fh), ref_masks[t])
    events = journal_dicts(out)
    assert sum(1 for e in events if e["kind"] == "RUN_START") == 2
    assert any(e["kind"] == "RUN_START" and e["payload"].get("resumed") for e in events)


@pytest.mark.slow
@pytest.mark.parametrize("stage", CANCEL_STAGES)
def test_stop_during_each_stage_cancels_within_two_seconds(clean_root, tmp_path, stage):
    from sinks import CallbackSink
    from nx47_pipeline.telemetry.cancel import CancelToken
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.telemetry.events import EventKind
    from nx47_pipeline.run.orchestrator import run_pipeline

    data, _, _ = clean_root
    out = tmp_path / "out"
    token = CancelToken()
    marks: dict[str, float] = {}

    def on_event(event):
        if (event.kind is EventKind.STEP and event.stage == stage
                and event.payload.phase == "begin" and "cancel" not in marks):
            marks["cancel"] = time.monotonic()
            token.cancel(f"test stop during {stage}")
        if event.kind is EventKind.CANCELLED and "cancelled" not in marks:
            marks["cancelled"] = time.monotonic()

    env = {k: v for k, v in run_env().items() if k.startswith("NX47_")}
    config = RunConfig.from_env(env, data_root=str(data), out_dir=str(out), use_unet=True,
                                max_train_volumes=4, max_val_volumes=2, budget_s=1800.0,
                                console=False)
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(
        r=run_pipeline(config, cancel=token, extra_sinks=[CallbackSink(on_event)])), daemon=True)
    th.start()
    th.join(400)
    assert not th.is_alive(), "run did not end after the stop"
    assert "cancel" in marks, f"stage {stage} never began"
    assert "cancelled" in marks, "no CANCELLED event"
    assert marks["cancelled"] - marks["cancel"] < 2.0
    assert result["r"].status == "cancelled"
    _assert_journal_verifies(out, allow_torn=False)
    _assert_no_partial_files(out)
    assert not (out / "run.lock").exists()
    kinds = [e["kind"] for e in journal_dicts(out)]
    assert kinds[-1] == "EXEC_COMPLETE"
    assert journal_dicts(out)[-1]["payload"]["status"] == "cancelled"


@pytest.mark.slow
def test_full_disk_during_a_run_gives_a_clean_error_and_no_corrupt_zip(clean_root, tmp_path):
    """Every file the run writes is capped at 64 KiB (RLIMIT_FSIZE): writes
    fail with EFBIG as on a full disk.  The run must end with a clean error
    (no traceback) and leave no corrupt zip at the final path."""
    import resource

    data, _, _ = clean_root
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(cli_cmd(data, out, *RUN_ARGS), cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode not in (0, -signal.SIGXFSZ), proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    sub = out / "submission.zip"
    if sub.exists():
        with zipfile.ZipFile(sub) as zf:
            assert zf.testzip() is None
    errors = [e for e in journal_dicts(out) if e["kind"] == "ERROR"]
    assert errors, "no ERROR event"
    _assert_journal_verifies(out, allow_torn=True)


#: Seconds a fresh interpreter needs to start the command (imports) before
#: the run's own clock starts; allowed on top of the budget for wall time.
STARTUP_ALLOWANCE_S = 3.0


@pytest.mark.slow
@pytest.mark.parametrize("budget_s", [2.0, 5.0, 10.0, 20.0, 45.0])
def test_budget_sweep_always_submits_before_the_deadline(clean_root, tmp_path, budget_s):
    data, _, test_ids = clean_root
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = run_cli(data, out, "--unet", "--auto-coverage", "--max-train-volumes", "0",
                   "--max-val-volumes", "2", "--budget-s", str(budget_s), timeout=600)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(f"{t}.tif" for t in test_ids)
    _assert_journal_verifies(out, allow_torn=False)
    events = journal_dicts(out)
    done = [e for e in events if e["kind"] == "EXEC_COMPLETE"][-1]
    stages = {e["stage"]: round(e["payload"].get("duration_s") or 0, 2) for e in events
              if e["kind"] == "STEP" and e["payload"].get("phase") == "end"}
    assert done["payload"]["duration_s"] <= budget_s, (
        f"run took {done['payload']['duration_s']:.1f} s of its own clock against a budget of "
        f"{budget_s} s; stage durations {stages}"
    )
    assert wall < budget_s + STARTUP_ALLOWANCE_S, f"wall {wall:.1f} s, budget {budget_s} s"


def test_full_disk_while_packaging_a_run_fails_cleanly_without_a_zip(tmp_path, monkeypatch):
    """A finished run loses its zip; the rerun only has to package, and the
    disk is full (ENOSPC from every zip write): the run ends failed with an
    ERROR naming submission.zip, and no zip, not even a partial one, exists."""
    from nx47_pipeline.config import RunConfig
    from nx47_pipeline.run.orchestrator import run_pipeline

    data, _, test_ids = build_clean_root(tmp_path / "data", n_train=4, n_test=2)
    out = tmp_path / "out"
    env = {k: v for k, v in run_env().items() if k.startswith("NX47_")}
    config = RunConfig.from_env(env, data_root=str(data), out_dir=str(out), use_unet=False,
                                max_train_volumes=3, max_val_volumes=1, console=False)
    first = run_pipeline(config)
    assert first.status == "ok"
    (out / "submission.zip").unlink()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full_disk)
    second = run_pipeline(config)
    assert second.status == "failed"
    assert not (out / "submission.zip").exists()
    assert not [p for p in out.iterdir() if "submission" in p.name], list(out.iterdir())
    errors = [e for e in journal_dicts(out) if e["kind"] == "ERROR"]
    assert any("submission.zip" in (e["payload"].get("subject", "") + e["payload"]["message"])
               and "No space left" in e["payload"]["message"] for e in errors), errors
    from nx47_pipeline.telemetry.journal import verify_journal

    assert verify_journal(out / "journal.jsonl").ok
