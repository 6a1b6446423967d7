"""PlanTracker: weighted global progress, monotonicity, ETA, snapshot."""

import json
import random
import threading

import pytest

from nx47_pipeline.telemetry.plan import PlanTracker


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def test_weighted_global_progress():
    clk = FakeClock()
    p = PlanTracker([("a", 1.0), ("b", 3.0)], clock=clk)
    assert p.overall_progress() == 0.0
    p.start("a", total=4)
    p.update("a", 2)
    assert p.overall_progress() == pytest.approx(0.125)
    p.finish("a")
    p.start("b", total=10)
    p.update("b", 5)
    assert p.overall_progress() == pytest.approx(0.25 + 0.75 * 0.5)
    p.finish("b")
    assert p.overall_progress() == 1.0


def test_skip_counts_as_complete():
    p = PlanTracker([("a", 1.0), ("b", 1.0)])
    p.skip("a", reason="no GPU")
    assert p.overall_progress() == 0.5
    assert p.snapshot()["stages"][0]["status"] == "skipped"
    assert p.snapshot()["stages"][0]["reason"] == "no GPU"


def test_global_never_goes_back_on_replan_or_counter_reset():
    p = PlanTracker([("a", 1.0), ("b", 1.0)])
    p.start("a", total=10)
    p.update("a", 10)
    g = p.overall_progress()
    assert g == 0.5
    p.set_weight("b", 9.0)  # raw figure would drop to 0.1
    assert p.overall_progress() == 0.5
    p.update("a", 2)  # a counter restarted
    assert p.overall_progress() == 0.5
    p.finish("a")
    p.start("b", total=10)
    p.update("b", 6)  # raw = (1 + 9*0.6)/10 = 0.64
    assert p.overall_progress() == pytest.approx(0.64)


def test_random_updates_keep_global_monotonic_in_unit_interval():
    rng = random.Random(0)
    p = PlanTracker([(f"s{i}", rng.uniform(0, 5)) for i in range(6)])
    last = 0.0
    for _ in range(2000):
        name = f"s{rng.randrange(6)}"
        op = rng.random()
        if op < 0.7:
            p.update(name, rng.uniform(0, 12), total=rng.choice([None, 10.0]))
        elif op < 0.8:
            p.set_weight(name, rng.uniform(0, 5))
        elif op < 0.85:
            p.finish(name, rng.choice(["ok", "failed", "skipped"]))
        g = p.overall_progress()
        assert 0.0 <= g <= 1.0 and g >= last
        last = g


def test_eta_and_rate_from_observed_progress():
    clk = FakeClock(100.0)
    p = PlanTracker([("a", 1.0), ("b", 1.0)], clock=clk)
    assert p.eta_s() is None
    p.start("a", total=10)
    clk.t = 110.0
    p.update("a", 5)  # 25 % in 10 s -> 30 s left
    assert p.rate("a") == pytest.approx(0.5)
    assert p.eta_s() == pytest.approx(30.0)
    p.finish("a")
    p.finish("b")
    assert p.eta_s() == 0.0


def test_unknown_stage_and_bad_weight_are_named():
    p = PlanTracker([("a", 1.0)])
    with pytest.raises(KeyError, match="'zzz'"):
        p.start("zzz")
    with pytest.raises(ValueError, match="'b'.*-1"):
        PlanTracker([("b", -1)])
    with pytest.raises(ValueError, match="status"):
        p.finish("a", "weird")


def test_write_snapshot_is_json_with_global(tmp_path):
    p = PlanTracker([("a", 2.0), ("b", 2.0)])
    p.start("a", total=4)
    p.update("a", 1)
    snap = p.write_snapshot(tmp_path / "plan.json")
    on_disk = json.loads((tmp_path / "plan.json").read_text())
    assert on_disk["global"] == snap["global"] == p.overall_progress() == pytest.approx(0.125)
    assert [s["name"] for s in on_disk["stages"]] == ["a", "b"]
    assert on_disk["stages"][0]["status"] == "running"
    assert not [f for f in tmp_path.iterdir() if f.name != "plan.json"]  # no temp file left


def test_thread_safe_updates():
    p = PlanTracker([(f"s{i}", 1.0) for i in range(4)])
    for i in range(4):
        p.start(f"s{i}", total=1000)

    def run(i):
        for k in range(1, 1001):
            p.update(f"s{i}", k)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.overall_progress() == 1.0
