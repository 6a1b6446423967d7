"""Telemetry facade end to end: journal, plan, console, cancellation, resume."""

import io
import json
import threading

import numpy as np
import pytest

from nx47_pipeline.telemetry.bus import QueueSink
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken
from nx47_pipeline.telemetry.events import MUST_DELIVER, EventKind
from nx47_pipeline.telemetry.journal import read_journal, verify_journal
from nx47_pipeline.telemetry.facade import Telemetry

STAGES = [("discover", 1.0), ("features", 6.0), ("fit", 3.0)]


def make(tmp_path, **kw):
    kw.setdefault("console_stream", io.StringIO())
    kw.setdefault("heartbeat_interval_s", 60.0)
    return Telemetry(out_dir=tmp_path, stages=STAGES, **kw)


def run_small(tel, n=12):
    recorded = []
    tel.start(run_id="r1")
    with tel.stage("discover"):
        tel.progress(step_done=1, step_total=1)
        recorded.append(tel.plan.overall_progress())
    with tel.stage("features", total=n):
        for i in range(n):
            for k in range(3):
                tel.progress(step_done=i + (k + 1) / 3, file=f"vol{i}", file_done=i,
                             file_total=n, substep=f"filter{k}", substep_done=k + 1,
                             substep_total=3)
                recorded.append(tel.plan.overall_progress())
        tel.trace("X", np.ones((4, 4, 4), np.float32))
    tel.skip_stage("fit", "nothing to fit")
    tel.finish("ok", submission="submission.zip", stats={"n_vol": n})
    return recorded


def test_progress_is_monotonic_and_equals_the_journal(tmp_path):
    tel = make(tmp_path, progress_interval_s=0.0)
    recorded = run_small(tel)
    events = read_journal(tmp_path / "journal.jsonl")
    glob = [e.payload.global_ for e in events if e.kind is EventKind.PROGRESS_UPDATE]
    assert glob == recorded
    assert glob == sorted(glob) and glob[-1] == pytest.approx(0.7)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["global"] == 1.0 and plan["stages"][2]["status"] == "skipped"
    assert verify_journal(tmp_path / "journal.jsonl").ok


def test_event_sequence_and_exec_complete_head(tmp_path):
    tel = make(tmp_path)
    run_small(tel)
    events = read_journal(tmp_path / "journal.jsonl")
    kinds = [e.kind for e in events]
    assert kinds[:3] == [EventKind.RUN_START, EventKind.CONFIG, EventKind.STEP]
    assert kinds[-3:] == [EventKind.GLOBAL_STATS, EventKind.HEARTBEAT, EventKind.EXEC_COMPLETE]
    assert [e.seq for e in events] == list(range(len(events)))
    steps = [(e.stage, e.payload.phase, e.payload.status) for e in events
             if e.kind is EventKind.STEP]
    assert steps == [("discover", "begin", "ok"), ("discover", "end", "ok"),
                     ("features", "begin", "ok"), ("features", "end", "ok"),
                     ("fit", "begin", "ok"), ("fit", "end", "skipped")]
    done = events[-1].payload
    assert done.status == "ok" and done.submission == "submission.zip"
    # EXEC_COMPLETE carries the hash of the line before it
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert done.journal_head == json.loads(lines[-2])["hash"]
    assert events[-2].payload.state == "FINISHED"
    traces = [e for e in events if e.kind is EventKind.ARRAY_TRACE]
    assert traces and traces[0].payload.shape == [4, 4, 4]


def test_progress_throttle_keeps_first_last_and_name_changes(tmp_path):
    t = [0.0]
    tel = make(tmp_path, mono=lambda: t[0], progress_interval_s=1.0)
    tel.start(run_id="r")
    with tel.stage("features", total=100):
        for i in range(100):
            t[0] += 0.01
            tel.progress(step_done=i + 1, substep="smooth")
    events = read_journal(tmp_path / "journal.jsonl")
    prog = [e.payload.step_done for e in events if e.kind is EventKind.PROGRESS_UPDATE]
    assert prog == [1.0, 100.0]
    assert tel.plan.counters("features") == (100.0, 100.0)


def test_cancel_ends_stage_cancelled(tmp_path):
    token = CancelToken()
    tel = make(tmp_path, cancel=token, progress_interval_s=0.0)
    tel.start(run_id="r")
    with pytest.raises(Cancelled, match="user pressed stop"):
        with tel.stage("features", total=10):
            for i in range(10):
                if i == 3:
                    token.cancel("user pressed stop")
                tel.progress(step_done=i + 1)
    tel.finish("cancelled")
    events = read_journal(tmp_path / "journal.jsonl")
    kinds = [e.kind for e in events]
    assert EventKind.CANCELLED in kinds
    end = [e for e in events if e.kind is EventKind.STEP and e.payload.phase == "end"][0]
    assert end.payload.status == "cancelled"
    assert events[-1].payload.status == "cancelled"
    assert events[-2].payload.state == "CANCELLED"
    assert max(e.payload.step_done for e in events if e.kind is EventKind.PROGRESS_UPDATE) == 4


def test_exception_in_stage_publishes_error_and_failed_status(tmp_path):
    tel = make(tmp_path)
    tel.start(run_id="r")
    with pytest.raises(ZeroDivisionError):
        with tel.stage("fit"):
            1 / 0
    tel.finish("failed")
    events = read_journal(tmp_path / "journal.jsonl")
    err = [e for e in events if e.kind is EventKind.ERROR][0]
    assert err.stage == "fit" and err.payload.code == "stage_failed"
    assert "ZeroDivisionError" in err.payload.extra["traceback"]
    end = [e for e in events if e.kind is EventKind.STEP and e.payload.phase == "end"][0]
    assert end.payload.status == "failed"
    assert tel.plan.status("fit") == "failed"


def test_failing_extra_sink_never_breaks_the_run(tmp_path):
    class Broken:
        name = "broken"

        def handle(self, event):
            raise RuntimeError("widget gone")

        def close(self):
            pass

    tel = make(tmp_path, extra_sinks=[Broken()])
    run_small(tel, n=2)
    events = read_journal(tmp_path / "journal.jsonl")
    errs = [e for e in events if e.kind is EventKind.ERROR]
    assert len(errs) == 1 and errs[0].payload.code == "sink_failed"
    assert events[-1].kind is EventKind.EXEC_COMPLETE


def test_rerun_resumes_the_chain(tmp_path):
    run_small(make(tmp_path), n=2)
    first = read_journal(tmp_path / "journal.jsonl")
    tel = make(tmp_path)
    tel.start(run_id="r2")
    tel.finish("ok")
    assert tel.resumed
    events = read_journal(tmp_path / "journal.jsonl")
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[len(first)].kind is EventKind.RUN_START
    assert events[len(first)].payload.resumed is True
    assert verify_journal(tmp_path / "journal.jsonl").ok


def test_queue_sink_receives_must_deliver_events(tmp_path):
    q = QueueSink(maxsize=4)
    tel = make(tmp_path, extra_sinks=[q], progress_interval_s=0.0)
    run_small(tel)
    journal = read_journal(tmp_path / "journal.jsonl")
    got = q.drain()
    assert [e for e in got if e.kind in MUST_DELIVER] == [
        e for e in journal if e.kind in MUST_DELIVER]
    assert q.closed


def test_console_is_line_per_event_and_throttled(tmp_path):
    out = io.StringIO()
    t = [0.0]
    tel = Telemetry(out_dir=None, stages=STAGES, console_stream=out, console_interval_s=5.0,
                    mono=lambda: t[0], progress_interval_s=0.0, heartbeat_interval_s=60.0)
    tel.console._clock = lambda: t[0]
    tel.start(run_id="r")
    with tel.stage("features", total=1000):
        for i in range(1000):
            t[0] += 0.01  # 10 s in total
            tel.progress(step_done=i + 1, file=f"v{i // 100}")
        tel.warning("odd file", subject="v3.tif")
    tel.finish("ok")
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    prog = [l for l in lines if " PROGRESS " in l]
    assert 2 <= len(prog) <= 4  # first, one after 5 s, the last
    assert "100.0%" not in prog[0] and "step 1000/1000" in prog[-1]
    assert any("WARNING [v3.tif] odd file" in l for l in lines)
    assert any("STEP end ok" in l for l in lines)
    assert " EXEC_COMPLETE ok " in lines[-1]


def test_disabled_telemetry_only_checks_cancellation(tmp_path):
    token = CancelToken()
    out = io.StringIO()
    tel = Telemetry(out_dir=tmp_path, stages=STAGES, enabled=False, cancel=token,
                    console_stream=out)
    tel.start(run_id="r")
    with tel.stage("features", total=3):
        tel.progress(step_done=1)
        tel.trace("x", np.zeros(3))
        token.cancel("stop")
        with pytest.raises(Cancelled):
            tel.progress(step_done=2)
    tel.finish("ok")
    assert out.getvalue() == ""
    assert not (tmp_path / "journal.jsonl").exists()


def test_heartbeat_runs_during_a_blocked_stage(tmp_path):
    q = QueueSink()
    tel = make(tmp_path, extra_sinks=[q], heartbeat_interval_s=0.1, budget_s=100.0)
    tel.start(run_id="r")
    with tel.stage("fit"):
        threading.Event().wait(0.45)
    tel.finish("ok")
    beats = [e for e in read_journal(tmp_path / "journal.jsonl") if e.kind is EventKind.HEARTBEAT]
    in_stage = [b for b in beats if b.stage == "fit"]
    assert len(in_stage) >= 2  # beats keep coming while the worker is blocked
    assert "STALLED" in [b.payload.state for b in in_stage]
    assert 0 < in_stage[0].payload.budget_left_s < 100.0
    assert beats[-1].payload.state == "FINISHED"


def test_unplanned_stage_is_added_with_a_warning(tmp_path):
    tel = make(tmp_path)
    tel.start(run_id="r")
    with tel.stage("unet"):
        pass
    tel.finish("ok")
    events = read_journal(tmp_path / "journal.jsonl")
    assert any(e.kind is EventKind.WARNING and e.payload.code == "unplanned_stage" for e in events)
    assert "unet" in tel.plan.stage_names and tel.plan.status("unet") == "ok"


def test_cancel_token_keeps_first_reason_and_wakes_waiters():
    token = CancelToken()
    assert not token() and token.wait(0.01) is False
    token.raise_if_cancelled()  # no-op while active
    threading.Timer(0.05, token.cancel, args=("deadline",)).start()
    assert token.wait(5) is True
    token.cancel("second reason")
    assert token.cancelled and token() and token.reason == "deadline"
    with pytest.raises(Cancelled, match="deadline"):
        token.raise_if_cancelled()


def test_unwritable_journal_is_reported_and_the_run_goes_on(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run folder should be")
    q = QueueSink()
    tel = Telemetry(out_dir=blocker, stages=STAGES, console_stream=io.StringIO(),
                    extra_sinks=[q], heartbeat_interval_s=60.0)
    tel.start(run_id="r")
    with tel.stage("fit"):
        tel.progress(step_done=1)
    tel.finish("ok")
    events = q.drain()
    assert tel.journal is None
    assert any(e.kind is EventKind.ERROR and e.payload.code == "journal_open_failed"
               for e in events)
    assert events[-1].kind is EventKind.EXEC_COMPLETE
    # plan.json cannot be written either: said once, not at every stage boundary
    assert sum(e.payload.code == "plan_write_failed" for e in events
               if e.kind is EventKind.WARNING) == 1


def test_rate_is_of_the_finest_active_counter(tmp_path):
    t = [0.0]
    tel = make(tmp_path, mono=lambda: t[0], progress_interval_s=0.0)
    tel.start(run_id="r")
    with tel.stage("features", total=4):
        for f in range(2):  # 2 files, 4 sub-steps each, one sub-step every 0.5 s
            for k in range(4):
                t[0] += 0.5
                tel.progress(step_done=f + (k + 1) / 4, file=f"v{f}", file_done=f,
                             file_total=2, substep=f"filter{k}", substep_done=k + 1,
                             substep_total=4)
        t[0] += 1.0
        tel.progress(step_done=4, file_done=2, file_total=2)  # file level only
    tel.finish("ok")
    prog = [e.payload for e in read_journal(tmp_path / "journal.jsonl")
            if e.kind is EventKind.PROGRESS_UPDATE]
    assert prog[3].rate == pytest.approx(2.0)   # sub-steps per second in file 0
    assert prog[7].rate == pytest.approx(2.0)   # counted again from the restart in file 1
    assert prog[-1].rate == pytest.approx(2 / 5.0)  # files per second since stage start


def test_console_prints_held_back_last_progress_before_stage_end():
    from nx47_pipeline.telemetry.bus import EventBus
    from nx47_pipeline.telemetry.console import ConsoleSink
    from nx47_pipeline.telemetry.events import ArrayTracePayload, ProgressPayload, StepPayload

    out = io.StringIO()
    now = [0.0]
    bus = EventBus(clock=lambda: 1000.0 + now[0], t0=1000.0)
    bus.attach(ConsoleSink(out, min_interval_s=5.0, clock=lambda: now[0]))

    def prog(done):
        return ProgressPayload(step="fit", step_index=0, step_count=1, step_done=done,
                               step_total=0.0, message=f"iter {done:g}")

    bus.publish(EventKind.STEP, StepPayload(phase="begin"), stage="fit")
    for i in range(1, 6):  # unknown total: no "final" report, all within 5 s
        now[0] = i * 0.5
        bus.publish(EventKind.PROGRESS_UPDATE, prog(i), stage="fit")
    for i in range(3):
        bus.publish(EventKind.ARRAY_TRACE, ArrayTracePayload(
            name=f"a{i}", shape=[2], dtype="uint8", min=0.0, max=1.0, mean=0.5,
            digest="ab" * 32, digest_method="sha256-full"), stage="fit")
    now[0] = 8.0  # 5.5 s after the first trace line
    bus.publish(EventKind.ARRAY_TRACE, ArrayTracePayload(
        name="a3", shape=[2], dtype="uint8", min=0.0, max=1.0, mean=0.5,
        digest="cd" * 32, digest_method="sha256-full"), stage="fit")
    bus.publish(EventKind.STEP, StepPayload(phase="end", duration_s=3.0), stage="fit")
    lines = out.getvalue().splitlines()
    body = [l.split(None, 3)[3] for l in lines]  # drop "[ t s] stage"
    assert body[0].startswith("STEP begin")
    assert "iter 1" in body[1]
    assert "TRACE a0" in body[2]
    assert "TRACE a3" in body[3] and "(+2 traces not shown)" in body[3]
    assert "iter 5" in body[4]  # the held-back last progress, before the end line
    assert body[5].startswith("STEP end ok")
    assert len(lines) == 6
