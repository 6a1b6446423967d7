"""The overall bar follows projected time, not the count of stages; the
journal's progress silences are measured per stage."""

from __future__ import annotations

import itertools

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.run import budget
from nx47_pipeline.run.orchestrator import STAGES
from nx47_pipeline.telemetry.events import (Event, EventKind, HeartbeatPayload, ProgressPayload, RunStartPayload,
                                            StepPayload, StepPhase)
from nx47_pipeline.telemetry.gaps import progress_gaps
from nx47_pipeline.telemetry.plan import PlanTracker


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run_stage(plan, clock, name, seconds):
    plan.start(name, 1.0)
    clock.t += seconds
    plan.finish(name)


def test_after_the_projection_the_bar_is_the_share_of_projected_time():
    clock = Clock()
    plan = PlanTracker(STAGES, clock=clock)
    run_stage(plan, clock, "discovery", 1.0)
    run_stage(plan, clock, "preflight", 60.0)
    projected = {"features": 30.0, "search": 200.0, "fit_prox": 10.0, "unet": 0.0, "validate": 40.0,
                 "segment": 18.0, "package": 2.0}
    plan.replan(projected)
    # what ran weighs what it took, the rest its projection: 61 s of 361 s
    assert plan.overall_progress() == pytest.approx(61.0 / 361.0)
    plan.start("features", 10.0)
    clock.t += 15.0
    plan.update("features", 5.0)
    assert plan.overall_progress() == pytest.approx((61.0 + 15.0) / 361.0)
    plan.finish("features")
    plan.start("search", 4.0)
    plan.update("search", 2.0)  # half of the longest stage: half of its 200 s counts
    assert plan.overall_progress() == pytest.approx((61.0 + 30.0 + 100.0) / 361.0, rel=0.05)


def test_a_stage_count_would_say_much_less_during_a_long_preflight():
    """The seed's complaint: under 5 % for the first 37 % of a run.  Before any
    projection the plan weighs rough seconds, so the preflight of a small
    coverage (its slice is most of the data) weighs a large share."""
    clock = Clock()
    plan = PlanTracker(STAGES, clock=clock)
    prior = budget.prior_stage_seconds(n_train=3, n_val=1, n_test=1, mvox_train=32.8, mvox_test=32.8,
                                       preflight_counts=(1, 1, 1), config=RunConfig())
    run_stage(plan, clock, "discovery", 0.5)
    plan.replan(prior)
    plan.start("preflight", 6.0)
    plan.update("preflight", 6.0)
    share = prior["preflight"] / sum(prior.values())
    assert share > 0.3
    assert plan.overall_progress() == pytest.approx((0.5 + prior["preflight"]) / (0.5 + sum(prior.values())),
                                                    rel=1e-6)
    by_count = PlanTracker([(n, 1.0) for n, _ in STAGES], clock=clock)
    by_count.start("preflight", 6.0)
    by_count.update("preflight", 6.0)
    assert plan.overall_progress() > 2 * by_count.overall_progress()


def test_prior_grows_with_coverage_and_the_preflight_share_shrinks():
    cfg = RunConfig()
    small = budget.prior_stage_seconds(n_train=3, n_val=1, n_test=1, mvox_train=32.8, mvox_test=32.8,
                                       preflight_counts=(1, 1, 1), config=cfg)
    large = budget.prior_stage_seconds(n_train=24, n_val=8, n_test=10, mvox_train=32.8, mvox_test=32.8,
                                       preflight_counts=(2, 1, 1), config=cfg)
    assert large["features"] == pytest.approx(8 * small["features"])
    assert large["preflight"] / sum(large.values()) < small["preflight"] / sum(small.values())


def test_replan_skipped_stages_weigh_nothing_and_the_bar_never_goes_back():
    clock = Clock()
    plan = PlanTracker([("a", 1.0), ("b", 1.0), ("c", 1.0)], clock=clock)
    run_stage(plan, clock, "a", 10.0)
    assert plan.overall_progress() == pytest.approx(1 / 3)
    plan.skip("b", "off")
    plan.replan({"c": 1000.0})  # 10 s of 1010 s: the figure holds
    assert plan.overall_progress() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="'c'"):
        plan.replan({"c": -1.0})


_seq = itertools.count()


def ev(kind, payload, ts, stage):
    return Event(seq=next(_seq), ts=ts, t=ts - 100.0, kind=kind, stage=stage, payload=payload)


def prog(stage, sub=""):
    return ProgressPayload(step=stage, step_index=0, step_count=1, step_done=0, step_total=1, substep=sub)


def test_progress_gaps_measures_each_stage_from_begin_to_end_and_ignores_heartbeats():
    beat = HeartbeatPayload(state="ACTIVE", since_progress_s=0.0, cpu_pct=0.0, worker_cpu_s=None, rss_mb=0.0,
                            elapsed_s=0.0, budget_left_s=None, interval_s=1.0)
    events = [
        ev(EventKind.RUN_START, RunStartPayload(run_id="r", out_dir="/o", pid=1), 100.0, ""),
        ev(EventKind.STEP, StepPayload(phase=StepPhase.BEGIN), 100.0, "features"),
        ev(EventKind.PROGRESS_UPDATE, prog("features", "slab 1"), 101.0, "features"),
        ev(EventKind.HEARTBEAT, beat, 104.0, "features"),  # alive, but not progress
        ev(EventKind.PROGRESS_UPDATE, prog("features", "slab 2"), 107.5, "features"),
        ev(EventKind.PROGRESS_UPDATE, prog("other", "x"), 108.0, "other"),  # another stage's
        ev(EventKind.STEP, StepPayload(phase=StepPhase.END), 109.0, "features"),
        ev(EventKind.STEP, StepPayload(phase=StepPhase.BEGIN), 109.0, "search"),
        ev(EventKind.STEP, StepPayload(phase=StepPhase.END), 111.0, "search"),
    ]
    feats, search = progress_gaps(events, limit_s=5.0)
    assert (feats.stage, feats.gap_s, feats.after, feats.before) == ("features", 6.5, "slab 1", "slab 2")
    assert feats.at_s == pytest.approx(1.0) and feats.updates == 2 and feats.over == 1
    assert feats.stage_s == pytest.approx(9.0)
    assert (search.stage, search.gap_s, search.updates, search.over) == ("search", 2.0, 0, 0)
