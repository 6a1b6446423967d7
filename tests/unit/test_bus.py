"""EventBus ordering and sink isolation; QueueSink coalescing guarantees."""

import threading

import pytest

from nx47_pipeline.telemetry.bus import EventBus, QueueSink
from sinks import CallbackSink
from nx47_pipeline.telemetry.events import (
    MUST_DELIVER,
    ArrayTracePayload,
    EventKind,
    HeartbeatPayload,
    MessagePayload,
    MetricPayload,
    ProgressPayload,
    StepPayload,
)


class ListSink:
    def __init__(self):
        self.events = []
        self.closed = 0

    def handle(self, event):
        self.events.append(event)

    def close(self):
        self.closed += 1


class Boom:
    name = "boom"

    def __init__(self, fail_at=0):
        self.n = 0
        self.fail_at = fail_at

    def handle(self, event):
        self.n += 1
        if self.n > self.fail_at:
            raise OSError("disk full")

    def close(self):
        pass


def progress(stage="s", done=1.0):
    return ProgressPayload(step=stage, step_index=0, step_count=1, step_done=done, step_total=10.0)


def heartbeat():
    return HeartbeatPayload(state="ACTIVE", since_progress_s=0.0, cpu_pct=0.0, worker_cpu_s=None,
                            rss_mb=1.0, elapsed_s=1.0, budget_left_s=None, interval_s=15.0)


def metric(i=0):
    return MetricPayload(name="val_score", value=float(i))


def step(phase="begin"):
    return StepPayload(phase=phase)


def test_a_sink_attached_first_gets_each_event_before_the_others():
    bus, order = EventBus(), []
    late = CallbackSink(lambda e: order.append("late"))
    first = CallbackSink(lambda e: order.append("first"))
    bus.attach(late)
    bus.attach(first, first=True)
    bus.attach(first, first=True)  # attaching twice is still a no-op
    bus.publish(EventKind.WARNING, MessagePayload(message="x"))
    assert order == ["first", "late"] and bus.sinks == [first, late]


def test_seq_and_t_assigned_from_clock():
    now = [100.0]
    bus = EventBus(clock=lambda: now[0], t0=90.0, seq_start=5)
    sink = ListSink()
    bus.attach(sink)
    e1 = bus.publish(EventKind.STEP, step(), stage="a")
    now[0] = 101.5
    e2 = bus.publish(EventKind.METRIC, metric(), stage="a")
    assert (e1.seq, e2.seq) == (5, 6)
    assert (e1.t, e2.t) == (10.0, 11.5)
    assert sink.events == [e1, e2]


def test_concurrent_publishers_deliver_in_seq_order_exactly_once():
    bus = EventBus()
    sink = ListSink()
    bus.attach(sink)

    def worker(k):
        for i in range(500):
            bus.publish(EventKind.METRIC, metric(i), stage=f"t{k}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e.seq for e in sink.events]
    assert seqs == list(range(2000))


def test_failing_sink_is_detached_and_reported_to_the_others():
    bus = EventBus()
    good = ListSink()
    bad = Boom(fail_at=1)
    bus.attach(bad)
    bus.attach(good)
    bus.publish(EventKind.METRIC, metric(0))
    bus.publish(EventKind.METRIC, metric(1))  # bad raises here: must not propagate
    bus.publish(EventKind.METRIC, metric(2))
    kinds = [e.kind for e in good.events]
    assert kinds == [EventKind.METRIC, EventKind.METRIC, EventKind.ERROR, EventKind.METRIC]
    err = good.events[2].payload
    assert err.code == "sink_failed" and err.subject == "boom" and "disk full" in err.message
    assert bad not in bus.sinks
    assert bus.failed_sinks and bus.failed_sinks[0][0] == "boom"
    assert bad.n == 2  # not called again after failing
    assert [e.seq for e in good.events] == [0, 1, 2, 3]


def test_close_closes_sinks_once():
    bus = EventBus()
    sink = ListSink()
    bus.attach(sink)
    bus.close()
    bus.close()
    assert sink.closed == 1


def test_callback_sink_and_type_check():
    got = []
    bus = EventBus()
    bus.attach(CallbackSink(got.append))
    bus.publish(EventKind.STEP, step())
    assert len(got) == 1
    with pytest.raises(TypeError):
        bus.publish(EventKind.STEP, metric())


# ---------------------------------------------------------------- QueueSink
def must_payload(kind, i):
    """A valid payload for each must-deliver kind."""
    from nx47_pipeline.telemetry import events as ev

    return {
        EventKind.RUN_START: lambda: ev.RunStartPayload(run_id=str(i), out_dir="o", pid=1),
        EventKind.CONFIG: lambda: ev.ConfigPayload(config={"i": i}),
        EventKind.STEP: lambda: step("begin"),
        EventKind.WARNING: lambda: MessagePayload(message=str(i)),
        EventKind.ERROR: lambda: MessagePayload(message=str(i)),
        EventKind.CANCELLED: lambda: MessagePayload(message=str(i)),
        EventKind.PREFLIGHT_OK: lambda: ev.PreflightPayload(ok=True),
        EventKind.PREFLIGHT_FAIL: lambda: ev.PreflightPayload(ok=False, reason=str(i)),
        EventKind.BUDGET: lambda: ev.BudgetPayload(decision="projection", message=str(i)),
        EventKind.GLOBAL_STATS: lambda: ev.GlobalStatsPayload(stats={"i": i}),
        EventKind.EXEC_COMPLETE: lambda: ev.ExecCompletePayload(status="ok"),
        EventKind.COVERAGE_AUDIT: lambda: ev.CoverageAuditPayload(
            pair_count_discovered=786, pair_count_selected_for_training=32,
            coverage_pct_selected_vs_discovered=4.1, max_train_volumes=24, max_val_volumes=8,
            n_train=24, n_val=8, n_test=1),
    }[kind]()


MUST_KINDS = sorted(MUST_DELIVER, key=lambda k: k.value)


def _publish_flood(bus, n):
    """n events: progress/heartbeat/metric storms with every must-deliver kind
    sprinkled in (each kind many times)."""
    published_must = []
    for i in range(n):
        r = i % 1000
        if r == 0:
            published_must.append(bus.publish(EventKind.STEP, step("begin"), stage=f"s{i // 1000}"))
        elif r % 97 == 0:
            kind = MUST_KINDS[(i // 97) % len(MUST_KINDS)]
            published_must.append(bus.publish(kind, must_payload(kind, i)))
        elif r == 999:
            published_must.append(bus.publish(EventKind.STEP, step("end"), stage=f"s{i // 1000}"))
        elif r % 7 == 0:
            bus.publish(EventKind.HEARTBEAT, heartbeat())
        elif r % 5 == 0:
            bus.publish(EventKind.METRIC, metric(i))
        else:
            bus.publish(EventKind.PROGRESS_UPDATE, progress(f"s{i // 1000}", r), stage=f"s{i // 1000}")
    return published_must


def test_queue_keeps_every_must_deliver_event_under_100k_flood():
    bus = EventBus()
    q = QueueSink(maxsize=100)
    bus.attach(q)
    must = _publish_flood(bus, 100_000)
    # the consumer was not reading at all during the flood
    out = q.drain()
    got_must = [e for e in out if e.kind in MUST_DELIVER]
    assert got_must == must
    assert {e.kind for e in got_must} == set(MUST_DELIVER)
    seqs = [e.seq for e in out]
    assert seqs == sorted(seqs)
    # at most one pending progress per stage and one heartbeat
    prog = [e.stage for e in out if e.kind is EventKind.PROGRESS_UPDATE]
    assert len(prog) == len(set(prog))
    assert sum(e.kind is EventKind.HEARTBEAT for e in out) == 1
    assert q.dropped > 80_000
    assert len(out) + q.dropped == 100_000


def test_queue_latest_progress_wins_per_stage():
    bus = EventBus()
    q = QueueSink(maxsize=10)
    bus.attach(q)
    for i in range(50):
        bus.publish(EventKind.PROGRESS_UPDATE, progress("a", i), stage="a")
        bus.publish(EventKind.PROGRESS_UPDATE, progress("b", i), stage="b")
    out = q.drain()
    assert [(e.stage, e.payload.step_done) for e in out] == [("a", 49.0), ("b", 49.0)]


def test_queue_grows_past_maxsize_rather_than_drop_must_deliver():
    bus = EventBus()
    q = QueueSink(maxsize=5)
    bus.attach(q)
    for i in range(20):
        bus.publish(EventKind.WARNING, MessagePayload(message=str(i)))
    assert q.qsize() == 20 and q.dropped == 0


def test_queue_drops_oldest_droppable_only_when_full():
    bus = EventBus()
    q = QueueSink(maxsize=5)
    bus.attach(q)
    for i in range(5):
        bus.publish(EventKind.METRIC, metric(i))
    assert q.dropped == 0
    for i in range(5, 8):
        bus.publish(EventKind.METRIC, metric(i))
    vals = [e.payload.value for e in q.drain()]
    assert vals == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert q.dropped == 3


def test_queue_full_of_must_deliver_drops_new_trace_not_must():
    bus = EventBus()
    q = QueueSink(maxsize=3)
    bus.attach(q)
    for _ in range(3):
        bus.publish(EventKind.STEP, step())
    tr = ArrayTracePayload(name="x", shape=[1], dtype="uint8", min=0.0, max=0.0, mean=0.0,
                           digest="d", digest_method="m")
    bus.publish(EventKind.ARRAY_TRACE, tr)
    out = q.drain()
    assert [e.kind for e in out] == [EventKind.STEP] * 3
    assert q.dropped_by_kind == {"ARRAY_TRACE": 1}


def test_queue_get_nowait_and_drain_limit():
    bus = EventBus()
    q = QueueSink()
    bus.attach(q)
    assert q.get_nowait() is None
    for i in range(5):
        bus.publish(EventKind.METRIC, metric(i))
    assert q.get_nowait().payload.value == 0.0
    assert [e.payload.value for e in q.drain(2)] == [1.0, 2.0]
    assert q.qsize() == 2


def test_queue_never_blocks_a_publisher_while_a_consumer_drains():
    bus = EventBus()
    q = QueueSink(maxsize=50)
    bus.attach(q)
    seen = []
    stop = threading.Event()

    def consumer():
        while not stop.is_set():
            seen.extend(q.drain())
        seen.extend(q.drain())

    c = threading.Thread(target=consumer)
    c.start()
    must = _publish_flood(bus, 20_000)
    stop.set()
    c.join()
    assert [e for e in seen if e.kind in MUST_DELIVER] == must
    assert [e.seq for e in seen] == sorted(e.seq for e in seen)
