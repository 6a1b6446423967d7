"""Planning a run: the projection, auto-coverage and the U-Net share one cost model.

These tests drive the orchestrator's planning step on a context with
in-memory records (no data is read), which the stage-function layout allows.
"""

from pathlib import Path

import pytest

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.data.discovery import Inventory, VolumeRecord
from nx47_pipeline.io.jsonio import read_json
from nx47_pipeline.run import orchestrator
from nx47_pipeline.run.budget import PreflightTimings, UNetCost, largest_fit, project_run
from nx47_pipeline.unet.params import params_from_config

SHAPE = (320, 320, 320)


def _timings(**kw):
    base = dict(
        features_s_per_mvox=0.5, search_s_per_mvox=2.0, fit_s_per_iter_row=1e-7,
        validate_s_per_mvox=1.0, segment_s_per_mvox=1.0, fallback_s_per_mvox=0.05,
        package_s_per_volume=0.05, mvox_train=32.768, mvox_test=32.768,
        rows_per_volume=20000, grid_fits=4, unet_s_per_batch=0.05,
    )
    base.update(kw)
    return PreflightTimings(**base)


def _inventory(n_pairs: int, n_test: int) -> Inventory:
    pairs = [VolumeRecord(f"{i:04d}", Path(f"/x/{i}.tif"), Path(f"/y/{i}.tif"), SHAPE, f"s{i % 3}", "train")
             for i in range(n_pairs)]
    test = [VolumeRecord(f"t{i}", Path(f"/t/{i}.tif"), None, SHAPE, None, "test") for i in range(n_test)]
    return Inventory(root=Path("/x"), pairs=pairs, test=test)


def _context(tmp_path, monkeypatch, **cfg):
    config = RunConfig(out_dir=str(tmp_path / "out"), console=False, **cfg)
    ctx = orchestrator.make_context(config)
    inv = _inventory(200, 10)
    ctx.state.inventory = inv
    ctx.state.selection = select_coverage(inv.pairs, max_train_volumes=150, max_val_volumes=50, seed=config.seed)
    ctx.state.timings = _timings()
    monkeypatch.setattr(orchestrator, "torch_available", lambda: True)
    return ctx


@pytest.mark.parametrize("use_unet", [True, False])
def test_auto_coverage_picks_a_coverage_whose_projection_fits(tmp_path, monkeypatch, use_unet):
    ctx = _context(tmp_path, monkeypatch, budget_s=3 * 3600, auto_coverage=True, use_unet=use_unet)
    orchestrator._plan(ctx)
    sel, t = ctx.state.selection, ctx.state.timings
    assert ctx.state.unet_plan.use is use_unet
    cost = UNetCost(params_from_config(ctx.config), t.unet_s_per_batch, ctx.config.unet_device) if use_unet else None
    chosen = project_run(t, n_train=len(sel.train), n_val=len(sel.val), n_test=10, config=ctx.config, unet=cost)
    assert 0 < len(sel.train) < 150
    assert chosen.total_s <= ctx.deadlines.left()  # the run's own projection, U-Net included, fits
    # the target is largest_fit's, computed with the same cost model; the
    # selection never exceeds it (scroll-disjoint validation may take fewer)
    target = read_json(ctx.out / "auto_coverage.json")["target"]
    assert tuple(target) == largest_fit(t, n_pairs=200, n_test=10, config=ctx.config, unet=cost)[:2]
    assert len(sel.train) <= target[0] and len(sel.val) <= target[1]
    # the segment reserve covers the U-Net's inference of every test volume
    if use_unet:
        assert ctx.deadlines.reserve_s > 10 * cost.infer_s(320**3)


def test_the_unet_shrinks_the_coverage_that_fits():
    cfg = RunConfig(budget_s=2 * 3600)
    t = _timings()
    cost = UNetCost(params_from_config(cfg), t.unet_s_per_batch, "cpu")
    with_unet = largest_fit(t, n_pairs=786, n_test=10, config=cfg, unet=cost)
    without = largest_fit(t, n_pairs=786, n_test=10, config=cfg)
    assert 0 < with_unet[0] < without[0]
    # largest_fit's figure is project_run's figure for that coverage
    again = project_run(t, n_train=with_unet[0], n_val=with_unet[1], n_test=10, config=cfg, unet=cost)
    assert again.total_s == pytest.approx(with_unet[2])


@pytest.mark.parametrize("budget_s, tta, planned", [(9 * 3600, "auto", True), (1200, "auto", False),
                                                     (1200, "on", True), (9 * 3600, "off", False)])
def test_flip_tta_is_a_budget_decision_that_sizes_the_segment_reserve(tmp_path, monkeypatch, budget_s, tta, planned):
    from nx47_pipeline.telemetry.events import BudgetDecision, EventKind
    from sinks import CallbackSink

    ctx = _context(tmp_path, monkeypatch, budget_s=budget_s, use_unet=True, unet_tta=tta)
    ctx.state.selection = select_coverage(ctx.state.inventory.pairs, max_train_volumes=4, max_val_volumes=2,
                                          seed=ctx.config.seed)
    seen = []
    ctx.tel.bus.attach(CallbackSink(seen.append))
    orchestrator._plan(ctx)
    decisions = [e.payload for e in seen if e.kind == EventKind.BUDGET and e.payload.decision == BudgetDecision.TTA]
    if tta == "off":
        assert decisions == []
    else:
        assert len(decisions) == 1 and decisions[0].extra["tta"] is planned
        assert ("flip TTA on" if planned else "flip TTA off") in decisions[0].message
    assert ctx.state.unet_plan.cost.params.tta_flip is planned
    # the reserve kept for the test volumes counts the eight passes when TTA is planned
    plain = UNetCost(params_from_config(ctx.config), ctx.state.timings.unet_s_per_batch, ctx.config.unet_device)
    assert (ctx.deadlines.reserve_s > 10 * 8 * plain.infer_s(320**3)) is planned


@pytest.mark.parametrize("tta", ["on", "off"])
def test_the_run_follows_one_plan_from_plan_run(tmp_path, monkeypatch, tta):
    """The reserve, the stage weights (plan.json), the search's work and the
    U-Net's deadline all come from the one RunPlan, made by plan_run at the
    chosen coverage with the U-Net cost the run uses (flip TTA included)."""
    from nx47_pipeline.run import budget

    ctx = _context(tmp_path, monkeypatch, budget_s=9 * 3600, use_unet=True, unet_tta=tta, auto_coverage=True)
    orchestrator._plan(ctx)
    st = ctx.state
    plan = st.plan
    assert isinstance(plan, budget.RunPlan)
    cost = st.unet_plan.cost
    assert cost.params.tta_flip is (tta == "on")
    again = budget.plan_run(st.timings, n_train=len(st.selection.train), n_val=len(st.selection.val), n_test=10,
                            mvox_test=SHAPE[0] ** 3 / 1e6, config=ctx.config, unet=cost)
    assert plan == again
    # the projection counts the U-Net inference the reserve counts: eight passes with TTA
    assert plan.projection == project_run(st.timings, n_train=len(st.selection.train), n_val=len(st.selection.val),
                                          n_test=10, config=ctx.config, unet=cost)
    assert ctx.deadlines.reserve_s == plan.segment_reserve_s
    assert plan.search_units == budget.search_units(ctx.config, n_val=len(st.selection.val))
    assert plan.validation_reserve_s == budget.validation_reserve_s(st.timings, n_val=len(st.selection.val),
                                                                    config=ctx.config, unet=cost)
    weights = {s["name"]: s["weight"] for s in ctx.tel.plan.snapshot()["stages"]}
    assert {k: weights[k] for k in plan.stage_weights} == pytest.approx(plan.stage_weights)
    assert plan.stage_weights == {k: max(v, budget.MIN_STAGE_WEIGHT) for k, v in plan.projection.per_stage.items()}


def test_before_the_preflight_the_plan_weighs_rough_seconds_and_nothing_for_training_with_a_model():
    from nx47_pipeline.run import budget

    kw = dict(n_train=24, n_val=8, n_test=10, mvox_train=32.768, mvox_test=32.768, preflight_counts=(2, 1, 1))
    cfg = RunConfig()
    plan = budget.plan_run(None, config=cfg, **kw)
    assert plan.projection is None and plan.projected_s == {}
    prior = budget.prior_stage_seconds(config=cfg, **kw)
    assert plan.stage_weights == pytest.approx(prior) and plan.stage_weights["search"] > 1
    with_model = budget.plan_run(None, config=cfg.replace(model_dir="/m"), **kw)
    assert [with_model.stage_weights[k] for k in ("features", "search", "fit_prox")] == [budget.MIN_STAGE_WEIGHT] * 3
    assert with_model.stage_weights["segment"] == plan.stage_weights["segment"]
