"""The NX47 pipeline, end to end, inside a runtime budget.

discovery -> coverage audit -> mandatory preflight (5 %) -> features ->
hyper-parameter search -> fit_prox -> optional U-Net -> validate -> segment
-> package.  This module owns the order, the deadlines, cancellation and the
run-level events; the stages themselves are functions in
:mod:`nx47_pipeline.run.stages` that hand off through files in the output
folder, so a rerun in the same folder resumes where the previous one stopped.

The run always ends with a complete ``submission.zip`` when test images
exist: stages before segmentation have a deadline that keeps back the time
to segment every test volume, and test volumes that no longer fit get the
cheap fallback segmentation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from nx47_pipeline.config import ModelKind, RunConfig
from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import MANIFEST, MODEL_WEIGHTS
from nx47_pipeline.model.bundle import Bundle, BundleError, load_bundle, write_manifest
from nx47_pipeline.model.predictor import PostChoice, PredictorKind
from nx47_pipeline.nnunet import budget as nnunet_budget
from nx47_pipeline.run import budget, nnunet_stage, preflight, stages
from nx47_pipeline.run.budget import Deadlines, UNetCost
from nx47_pipeline.run.context import PostDefaults, RunContext, UNetPlan
from nx47_pipeline.run.executor import InProcess, local_threads, make_executor
from nx47_pipeline.run.resume import acquire_lock, check_run_key, release_lock, run_key
from nx47_pipeline.run.stages import RunFailed
from nx47_pipeline.telemetry.cancel import Cancelled, CancelToken
from nx47_pipeline.telemetry.events import (
    BudgetDecision,
    EventKind,
    MessagePayload,
    PreflightPayload,
    StageName,
    Status,
)
from nx47_pipeline.telemetry.facade import Telemetry
from nx47_pipeline.unet.backend import resolve_device, torch_available

#: Stages of the plan with their initial weights (expected relative cost,
#: used until a projection exists); after the preflight every stage weighs
#: seconds: those that ran what they took, the others their projection
#: (:meth:`~nx47_pipeline.telemetry.plan.PlanTracker.replan`).
STAGES: tuple[tuple[str, float], ...] = (
    (StageName.DISCOVERY, 1.0),
    (StageName.PREFLIGHT, 6.0),
    (StageName.FEATURES, 20.0),
    (StageName.SEARCH, 20.0),
    (StageName.FIT_PROX, 10.0),
    (StageName.UNET, 10.0),
    (StageName.VALIDATE, 8.0),
    (StageName.SEGMENT, 15.0),
    (StageName.PACKAGE, 2.0),
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREFLIGHT, EXIT_CANCELLED = 0, 1, 2, 3, 130

#: The stages of a run that trains nnU-Net (``model_kind`` nnunet), with their initial weights.
NNUNET_STAGES: tuple[tuple[str, float], ...] = (
    (StageName.DISCOVERY, 1.0),
    (StageName.PREFLIGHT, 6.0),
    (StageName.NNUNET, 60.0),
    (StageName.VALIDATE, 8.0),
    (StageName.SEGMENT, 15.0),
    (StageName.PACKAGE, 2.0),
)

_LINEAR_TRAINING = (StageName.FEATURES, StageName.SEARCH, StageName.FIT_PROX, StageName.UNET)


def stages_of(config: RunConfig) -> tuple[tuple[str, float], ...]:
    """The plan's stages of a run with ``config``: those of the model it trains
    (:data:`STAGES` for the linear model and for a run with ``--model``,
    :data:`NNUNET_STAGES` for nnU-Net); the other kind's never show."""
    return NNUNET_STAGES if config.model_kind == ModelKind.NNUNET and not config.model_dir else STAGES


def _training_stages(config: RunConfig) -> tuple[str, ...]:
    """The stages between the preflight and the segmentation, skipped when no model is trained."""
    names = [name for name, _ in stages_of(config)]
    return tuple(names[names.index(StageName.PREFLIGHT) + 1:names.index(StageName.SEGMENT)])


@dataclass
class RunResult:
    """Outcome of :func:`run_pipeline`."""

    status: Status  # ok | failed | cancelled | preflight_failed
    out_dir: Path
    submission: Path | None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the run failed, when it did

    @property
    def exit_code(self) -> int:
        return {
            Status.OK: EXIT_OK,
            Status.CANCELLED: EXIT_CANCELLED,
            Status.PREFLIGHT_FAILED: EXIT_PREFLIGHT,
        }.get(self.status, EXIT_FAILED)


# ---------------------------------------------------------------------------
# stage bracket
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _stage(ctx: RunContext, name: StageName, total: float = 1.0) -> Iterator[None]:
    """STEP begin/end around a stage; the plan keeps its status and seconds.
    After a stage that was projected, BUDGET ``reprojection``."""
    with ctx.tel.stage(name, total=total):
        yield
    if ctx.state.plan is not None and ctx.state.plan.projection is not None:
        _reproject(ctx, name)


def _reproject(ctx: RunContext, name: StageName) -> None:
    """Re-project the stages still to run, scaled by the error so far
    (actual / projected seconds of the projected stages that ran)."""
    names = {str(n) for n, _ in stages_of(ctx.config)}
    proj = {n: v for n, v in ctx.state.plan.projected_s.items() if n in names}  # this kind of run's stages
    plan = ctx.tel.plan
    done = [n for n in proj if plan.status(n).done]
    ran = [n for n in done if plan.seconds(n) is not None and proj[n] > 0]
    actual = sum(plan.seconds(n) for n in ran)
    projected = sum(proj[n] for n in ran)
    if projected <= 0:
        return
    ratio = actual / projected
    remaining = [n for n in proj if not plan.status(n).done]
    remaining_s = ratio * sum(proj[n] for n in remaining)
    stage_actual = plan.seconds(name) or 0.0
    ctx.tel.budget(
        BudgetDecision.REPROJECTION,
        f"after {name}: {stage_actual:.0f} s (projected {proj.get(name, 0.0):.0f} s); so far actual / "
        f"projected = {ratio:.2f}; remaining {remaining_s / 60:.1f} min against "
        f"{ctx.deadlines.left() / 60:.1f} min left",
        budget_s=ctx.config.budget_s,
        projected_s=remaining_s,
        fits=remaining_s <= ctx.deadlines.left(),
        extra={"stage": str(name), "stage_actual_s": stage_actual, "stage_projected_s": proj.get(name, 0.0),
               "actual_over_projected": ratio, "remaining_stages": [str(n) for n in remaining]},
    )


def _skip(ctx: RunContext, name: StageName, reason: str) -> None:
    ctx.tel.skip_stage(name, reason)


# ---------------------------------------------------------------------------
# discovery, preflight, plan
# ---------------------------------------------------------------------------
def _discovery(ctx: RunContext) -> None:
    with _stage(ctx, StageName.DISCOVERY, total=1.0):
        inv, sel = stages.discovery(ctx, ctx.reporter())
        ctx.state.inventory, ctx.state.selection = inv, sel
        key, fields = run_key(ctx.config.to_dict(), [r.id for r in sel.train], [r.id for r in sel.val])
        stale = check_run_key(ctx.out, key, fields)
        if stale is not None:
            ctx.warn(
                f"{ctx.out}: settings or selection differ from the previous run in this "
                f"folder; its artifacts were moved to {stale.name}/ and the run starts afresh",
                subject=str(ctx.out),
                code="resume_key_changed",
            )
        _emit_audit(ctx)
        ctx.progress(1, 1, message=f"{len(inv.pairs)} pairs, {len(inv.test)} test")


def _emit_audit(ctx: RunContext) -> None:
    inv, sel = ctx.state.inventory, ctx.state.selection
    ctx.state.audit = dict(sel.audit)
    ctx.tel.emit(EventKind.COVERAGE_AUDIT, stages.coverage_audit(inv, sel))


def _emit_preflight(ctx: RunContext, ok: bool, reason: str, dur: float, counts: tuple[int, int, int],
                    timings: dict[str, Any]) -> None:
    n_tr, n_va, n_te = counts
    ctx.tel.emit(
        EventKind.PREFLIGHT_OK if ok else EventKind.PREFLIGHT_FAIL,
        PreflightPayload(
            ok=ok, reason=reason, duration_s=float(dur), n_train=n_tr, n_val=n_va, n_test=n_te,
            timings={k: float(v) for k, v in timings.items() if isinstance(v, (int, float))},
        ),
    )


def _mean_mvox(records) -> float:
    """Mean million voxels of ``records`` (0 when there are none)."""
    return float(np.mean([stages.mvox(r.shape) for r in records])) if records else 0.0


def _apply_plan(ctx: RunContext, plan: budget.RunPlan) -> None:
    """The run follows ``plan`` from here: the training deadline keeps its
    segment reserve back, the stages weigh its projection, BUDGET
    ``reprojection`` compares with it."""
    ctx.deadlines.reserve_s = plan.segment_reserve_s
    ctx.tel.plan.replan(plan.stage_weights)
    ctx.state.plan = plan


def _prior_plan(ctx: RunContext, preflight_counts: tuple[int, int, int]) -> None:
    """Weigh the plan by rough seconds per stage (:func:`budget.plan_run`
    without timings) until the preflight's projection replaces them: the
    overall bar then moves with the preflight's real share of the run, not
    with a stage count."""
    st = ctx.state
    sel, inv = st.selection, st.inventory
    if sel is None or inv is None:
        return
    prior = budget.plan_run(None, n_train=len(sel.train), n_val=len(sel.val), n_test=len(inv.test),
                            mvox_train=_mean_mvox(sel.train), mvox_test=_mean_mvox(inv.test),
                            preflight_counts=preflight_counts, config=ctx.config)
    ctx.tel.plan.replan(prior.stage_weights)


def _preflight(ctx: RunContext) -> Status:
    """Run the preflight: ``OK``, ``FAILED`` (PREFLIGHT_FAIL) or ``BUDGET``
    (no time for it: BUDGET ``preflight``)."""
    st = ctx.state
    sl = preflight.preflight_slice(ctx, st.inventory, st.selection)
    counts = (len(sl.train), len(sl.val), len(sl.test))
    _prior_plan(ctx, counts)
    with _stage(ctx, StageName.PREFLIGHT, total=len(preflight.PHASES)):
        cached = budget.load_preflight_timings(ctx.out)
        if cached is not None:
            ctx.state.timings = cached
            ctx.progress(len(preflight.PHASES), len(preflight.PHASES), message="preflight already passed (resumed)")
            _emit_preflight(ctx, True, "resumed: timings from the earlier preflight", 0.0, counts,
                            dataclasses.asdict(cached))
            return Status.OK
        t0 = time.monotonic()
        try:
            if st.model is not None:  # inference only (--model): time that part
                if not sl.test:
                    raise RunFailed("preflight needs at least one test image; none found")
                timings = preflight.run_inference_chain(
                    ctx, sl, ctx.folder.preflight, model=st.model, best=st.best, unet=st.unet,
                    unet_cost=st.unet_plan.cost, post=_post_defaults(ctx), sweep=st.model_sweep)
            else:
                preflight.check_slice(sl, len(ctx.state.selection.train), len(ctx.state.selection.val))
                timings = preflight.run_chain(ctx, sl, ctx.folder.preflight)
        except Cancelled:
            raise
        except preflight.OutOfTime as exc:
            ctx.tel.budget(
                BudgetDecision.PREFLIGHT,
                f"the budget leaves no time for the preflight ({exc}); training is skipped "
                "and every test volume gets the fallback segmentation",
                budget_s=ctx.config.budget_s,
                deadline_s=preflight.preflight_deadline(ctx, sl) - ctx.t_start,
            )
            return Status.BUDGET
        except Exception as exc:  # noqa: BLE001 - reported as PREFLIGHT_FAIL
            reason = f"{type(exc).__name__}: {exc}"
            _emit_preflight(ctx, False, reason, time.monotonic() - t0, counts, {})
            ctx.err(f"preflight failed, the run stops before training: {reason}", code="preflight_failed")
            return Status.FAILED
        timings.save(ctx.folder.timings)
        ctx.state.timings = timings
        _emit_preflight(ctx, True, "", time.monotonic() - t0, counts, dataclasses.asdict(timings))
        return Status.OK


def resolve_unet(ctx: RunContext) -> UNetPlan:
    """Whether this run trains the U-Net (``--unet`` / ``--no-unet`` / auto)."""
    cfg = ctx.config
    if cfg.use_unet is False:
        return UNetPlan(False, "U-Net off (--no-unet)")
    if not torch_available():
        msg = "U-Net off: PyTorch is not installed (pip install torch==2.13.0 for the CPU build)"
        if cfg.use_unet:
            ctx.warn(msg, code="unet_unavailable")
        return UNetPlan(False, msg)
    cost = UNetCost(
        params=stages.unet_params(ctx),
        seconds_per_patch_batch=ctx.state.timings.unet_s_per_batch if ctx.state.timings else None,
        device=cfg.unet_device,
    )
    if cfg.use_unet is None:
        if resolve_device(cfg.unet_device) != "cuda":
            return UNetPlan(False, "U-Net off by default on a CPU-only machine (no CUDA device)")
        return UNetPlan(True, "U-Net on: CUDA device found", cost)
    return UNetPlan(True, "U-Net on (--unet)", cost)


def _plan_tta(ctx: RunContext, cost: UNetCost | None, *, n_test: int) -> UNetCost | None:
    """Flip TTA for the U-Net's inference (``unet_tta``: ``auto`` when
    :func:`~nx47_pipeline.run.budget.tta_fits`, ``on``, ``off``), as a BUDGET
    ``tta`` decision; returns the cost model the run is planned with."""
    cfg, st = ctx.config, ctx.state
    if cost is None or cfg.unet_tta == "off":
        return cost
    n_val, left = len(st.selection.val), ctx.deadlines.left()
    fits, extra = budget.tta_fits(cost, st.timings, n_val=n_val, n_test=n_test, remaining_s=left)
    on = fits or cfg.unet_tta == "on"
    what = (f"{extra:.0f} s more U-Net inference for {n_val} validation + {n_test} test volumes"
            if not math.isnan(extra) else "no preflight timing to size it")
    why = ("NX47_UNET_TTA=on" if cfg.unet_tta == "on" else
           f"{'within' if fits else 'over'} {budget.TTA_MAX_SHARE:.0%} of the {left:.0f} s left")
    ctx.tel.budget(BudgetDecision.TTA, f"flip TTA {'on' if on else 'off'}: {what}, {why}", budget_s=cfg.budget_s,
                   fits=bool(fits), extra={"tta": on, "extra_s": None if math.isnan(extra) else extra})
    if not on:
        return cost
    return dataclasses.replace(cost, params=dataclasses.replace(cost.params, tta_flip=True))


def _plan(ctx: RunContext) -> None:
    """Project the run (BUDGET ``projection``), choose the coverage that
    fits (auto-coverage), decide flip TTA, then follow the run's plan at that
    coverage (:func:`budget.plan_run`)."""
    cfg, st = ctx.config, ctx.state
    timings, sel, inv = st.timings, st.selection, st.inventory
    n_test = len(inv.test)
    st.unet_plan = resolve_unet(ctx)
    cost = st.unet_plan.cost if st.unet_plan.use else None
    proj = budget.project_run(timings, n_train=len(sel.train), n_val=len(sel.val), n_test=n_test,
                              config=cfg, unet=cost)
    unet_s = budget.unet_projected_s(proj, timings, cost)
    remaining = ctx.deadlines.left()
    max_tr, max_va, proj_fit = budget.largest_fit(
        timings, n_pairs=len(inv.pairs), n_test=n_test, config=cfg, remaining_s=remaining, unet=cost,
    )
    fits = proj.total_s <= remaining
    ctx.tel.budget(
        BudgetDecision.PROJECTION,
        (
            f"projected {proj.total_s / 60:.1f} min for {len(sel.train)} train / {len(sel.val)} val / "
            f"{n_test} test against {remaining / 60:.1f} min usable: "
            f"{'fits' if fits else 'does NOT fit'}; largest coverage that fits: "
            f"{max_tr} train / {max_va} val ({proj_fit / 60:.1f} min). {st.unet_plan.why}"
            + (f" (U-Net projected {unet_s / 60:.1f} min)" if unet_s else "")
        ),
        budget_s=cfg.budget_s,
        projected_s=proj.total_s,
        fits=fits,
        max_train_fit=max_tr,
        max_val_fit=max_va,
        extra={"per_stage": proj.per_stage, "unet": st.unet_plan.why, "unet_projected_s": unet_s},
    )
    # nothing fits: the smallest coverage gives training its best chance.
    # The decision is recorded, so a rerun in this folder resumes with it.
    target = (max_tr, max_va) if max_tr > 0 else (1, 1)
    decision_path = ctx.folder.auto_coverage
    if cfg.auto_coverage:
        recorded = read_json(decision_path)
        if recorded and "target" in recorded:
            target = tuple(recorded["target"])
        else:
            write_json(decision_path, {"target": list(target), "max_train_fit": max_tr, "max_val_fit": max_va})
    if cfg.auto_coverage and target != (len(sel.train), len(sel.val)) and len(inv.pairs) >= 2:
        st.selection = select_coverage(inv.pairs, max_train_volumes=target[0], max_val_volumes=target[1],
                                       seed=cfg.seed)
        ctx.tel.budget(
            BudgetDecision.AUTO_COVERAGE,
            f"auto-coverage: using {len(st.selection.train)} train / {len(st.selection.val)} val "
            f"(was {len(sel.train)} / {len(sel.val)})"
            + ("" if max_tr > 0 else "; even the smallest coverage does not fit the projection"),
            budget_s=cfg.budget_s,
            projected_s=proj_fit,
            fits=max_tr > 0,
            max_train_fit=max_tr,
            max_val_fit=max_va,
        )
        _emit_audit(ctx)
    cost = _plan_tta(ctx, cost, n_test=n_test)
    if cost is not None:
        st.unet_plan = dataclasses.replace(st.unet_plan, cost=cost)
    _apply_plan(ctx, budget.plan_run(timings, n_train=len(st.selection.train), n_val=len(st.selection.val),
                                     n_test=n_test, mvox_test=_mean_mvox(inv.test), config=cfg, unet=cost))


# ---------------------------------------------------------------------------
# training stages
# ---------------------------------------------------------------------------
def _train(ctx: RunContext) -> None:
    """features -> search -> fit_prox -> U-Net -> validate, each skipped with
    a reason when its input is missing or the deadline has passed."""
    cfg, st = ctx.config, ctx.state
    train = st.selection.train
    samples = None
    had_samples = False
    with _stage(ctx, StageName.FEATURES, total=max(len(train), 1)):
        paths = stages.features(ctx, ctx.reporter(), train, ctx.folder.features, deadline=ctx.deadlines.training,
                                executor=ctx.executor)
        if paths:
            ctx.progress(len(train), max(len(train), 1), message=f"loading the samples of {len(paths)} volumes")
            samples = stages.load_samples(paths)
            had_samples = True
        else:
            ctx.err("no training volume could be read; the model is skipped", code="no_training")
    if samples is None:
        for name in (StageName.SEARCH, StageName.FIT_PROX):
            _skip(ctx, name, "no training samples")
    else:
        val = st.selection.val
        with _stage(ctx, StageName.SEARCH, total=st.plan.search_units):
            st.best = stages.search(ctx, ctx.reporter(), samples, val, ctx.folder.search,
                                    max_iter=cfg.search_max_iter, deadline=ctx.deadlines.training)["best"]
        # the auto-context rounds go on in the fit_prox stage, on the volumes that gave samples
        fitted = {p.stem for p in paths}
        ctx_train = stages.context_volumes(cfg, [r for r in train if r.id in fitted])
        fit_total = cfg.fit_max_iter * (2 if ctx_train else 1)
        with _stage(ctx, StageName.FIT_PROX, total=fit_total):
            model = stages.fit(ctx, ctx.reporter(), samples, st.best, ctx.folder.model,
                               max_iter=cfg.fit_max_iter, deadline=ctx.deadlines.training, total=fit_total)
            if not np.any(model.coef):
                ctx.warn("the fitted model has no non-zero weight (stopped by the budget before "
                         "learning, or regularised away); test volumes get the fallback segmentation",
                         subject=str(ctx.folder.model / MODEL_WEIGHTS), code="model_empty")
                model = None
            elif ctx_train:
                model = stages.context(ctx, ctx.reporter(), model, ctx_train, ctx.folder.model,
                                       deadline=ctx.deadlines.training, start=cfg.fit_max_iter, total=fit_total)
            st.model = model
        del samples

    if not st.unet_plan.use or not train or st.model is None:
        _skip(ctx, StageName.UNET, "U-Net off" if not st.unet_plan.use else
              "no training volumes" if not train else "no fit_prox model")
    elif time.monotonic() > ctx.deadlines.training:
        ctx.reporter().deadline_hit("unet", "no time left to train the U-Net")
        _skip(ctx, StageName.UNET, "training deadline passed")
    else:
        # the U-Net leaves the validation time (with and without it) before the training deadline
        with _stage(ctx, StageName.UNET, total=stages.unet_params(ctx).epochs + 1):
            st.unet = stages.unet(ctx, ctx.reporter(), train, ctx.folder.unet, model=st.model,
                                  deadline=ctx.deadlines.training - st.plan.validation_reserve_s,
                                  tta=bool(st.unet_plan.cost and st.unet_plan.cost.params.tta_flip))

    if st.model is None:
        _skip(ctx, StageName.VALIDATE, "no model" if had_samples else "no training samples")
        return
    _validate(ctx)
    _write_bundle_manifest(ctx)


def _validate(ctx: RunContext, *, model_sweep: bool = False) -> None:
    """Segment and score the validation pairs.  With a U-Net they are also
    segmented by fit_prox alone (``val/linear/``, not published); when that
    scores better on the volumes both scored, the U-Net is dropped (WARNING
    ``unet_not_better``): test segmentation and the bundle use fit_prox alone.
    ``model_sweep`` (a run with an imported nnU-Net bundle): its post-processing
    is then chosen on the validation maps (:data:`~nx47_pipeline.run.stages.MODEL_SWEEP`,
    from the bundle's), and the test volumes are segmented with that choice."""
    st = ctx.state
    val = st.selection.val
    with _stage(ctx, StageName.VALIDATE, total=max(len(val), 1)):
        linear: dict[str, dict[str, float]] = {}
        if st.unet is not None and val:
            def alone(done, total, **fields):
                fields["substep"] = f"fit_prox alone: {fields.get('substep') or 'volume'}"
                ctx.progress(0, total, **fields)
            linear = stages.validate(ctx, ctx.reporter(publish=False, progress=alone), st.model, st.best, None,
                                     val, ctx.folder.val / "linear", deadline=ctx.deadlines.training,
                                     executor=ctx.executor, post=_post_defaults(ctx))
        st.val_scores = stages.validate(ctx, ctx.reporter(), st.model, st.best, st.unet, val, ctx.folder.val,
                                        deadline=ctx.deadlines.training, executor=ctx.executor,
                                        post=_post_defaults(ctx))
        unet_pair = None
        if st.unet is not None and st.val_scores:
            # the U-Net's own hysteresis pair, chosen on validation like fit_prox's
            unet_pair, st.val_scores = stages.sweep_thresholds(ctx, ctx.reporter(), st.best, val, ctx.folder.val,
                                                              st.val_scores, deadline=ctx.deadlines.training)
        both = sorted(set(linear) & set(st.val_scores))
        if st.unet is not None and both:
            with_unet = float(np.mean([st.val_scores[i]["score"] for i in both]))
            without = float(np.mean([linear[i]["score"] for i in both]))
            if without > with_unet:
                ctx.warn(f"the U-Net's validation score {with_unet:.3f} is below fit_prox alone ({without:.3f}) "
                         f"on {len(both)} validation volumes: test volumes are segmented by fit_prox alone "
                         "and the bundle holds no U-Net", subject=str(ctx.folder.val / "linear"),
                         code="unet_not_better")
                st.unet = None
                st.val_scores = linear
            elif unet_pair is not None:
                st.best = {**st.best, **{k: unet_pair[k] for k in stages.CHOICE_KEYS}}
        # the pair (and dust / plug sizes) chosen again on the maps that segment the test volumes, when no
        # search chose on them: an imported nnU-Net's (its bundle's post-processing, nnU-Net's argmax by
        # default, is the start; a linear bundle keeps its own), or the auto-context rounds' (sharper than the
        # base model's the search chose on; a run with --model keeps its bundle's choice)
        sweep = (stages.MODEL_SWEEP if model_sweep else
                 stages.CONTEXT_SWEEP if (st.unet is None and not linear and getattr(st.model, "rounds", ())
                                          and not ctx.config.model_dir) else None)
        if sweep is not None and st.val_scores:
            pair, st.val_scores = stages.sweep_thresholds(ctx, ctx.reporter(), st.best, val, ctx.folder.val,
                                                          st.val_scores, deadline=ctx.deadlines.training,
                                                          sweep=sweep, defaults=_post_defaults(ctx))
            if pair is not None:
                st.best = {**st.best, **{k: pair[k] for k in stages.CHOICE_KEYS}}


def _validation_summary(st) -> dict[str, Any]:
    scores = [v["score"] for v in st.val_scores.values()]
    return {"mean_score": float(np.mean(scores)) if scores else None, "per_volume": st.val_scores}


def _write_bundle_manifest(ctx: RunContext) -> None:
    """``model/model.json``: the trained model as a bundle (``nx47 export-model``)."""
    cfg, st = ctx.config, ctx.state
    post = _post_defaults(ctx)
    try:
        write_manifest(
            ctx.folder.model, best=st.best, closing_radius=stages.closing_of(post, st.best),
            min_component_voxels=cfg.min_component_voxels, min_size=stages.min_size_of(post, st.best),
            plug_size=stages.plug_size_of(st.best), unet_fuse=cfg.unet_fuse if st.unet else None,
            train_ids=[r.id for r in st.selection.train], val_ids=[r.id for r in st.selection.val],
            validation=_validation_summary(st),
        )
    except (OSError, ValueError) as exc:
        ctx.err(f"{ctx.folder.model / MANIFEST}: could not write the model bundle manifest: {exc}",
                code="bundle_write_failed")


def _post_defaults(ctx: RunContext) -> PostDefaults:
    """The run's post-processing defaults: its bundle's in a run with
    ``--model`` (once loaded), else its config's."""
    st = ctx.state
    return st.post_defaults if st.post_defaults is not None else PostDefaults.of_config(ctx.config)


def _use_bundle(ctx: RunContext, path: Path | str | None = None) -> Bundle | None:
    """Load ``path`` (default ``config.model_dir``); the run then segments with
    it.  None, with an ERROR naming the file, when the bundle is refused."""
    cfg, st = ctx.config, ctx.state
    path = cfg.model_dir if path is None else path
    try:
        bundle = load_bundle(path, device=cfg.unet_device)
    except (BundleError, ImportError) as exc:
        ctx.err(f"model bundle refused: {exc}", subject=str(path), code="bundle_invalid")
        return None
    # the bundle's post-processing makes the masks those of the run that trained it (the
    # fallback's included); the run's config stays as it started
    st.post_defaults = PostDefaults(closing_radius=tuple(int(v) for v in bundle.closing_radius),
                                    min_size=int(bundle.min_component_voxels))
    if bundle.model is None:  # an nnU-Net bundle: its predictor, its post-processing to start the sweep from
        st.model, st.best, st.unet = bundle.predictor, dict(bundle.best), None
        # chosen on validation again, unless the run that trained it chose it (nx47 run --model-kind nnunet)
        st.model_sweep = (bundle.kind == PredictorKind.NNUNET
                          and not bundle.manifest["postprocess"].get("chosen_on_validation", False))
        st.bundle_summary = bundle.summary()
        return bundle
    st.model, st.best, st.unet = bundle.model, dict(bundle.best), bundle.unet
    if bundle.unet is not None:
        st.unet_plan = UNetPlan(True, f"U-Net from {bundle.path}",
                                UNetCost(params=bundle.unet.params, device=cfg.unet_device))
    st.bundle_summary = bundle.summary()
    return bundle


def _fit_nnunet(ctx: RunContext, test, *, seconds_per_window: float | None = None) -> float:
    """An nnU-Net bundle's prediction sized to the time left after the
    preflight (:func:`nx47_pipeline.nnunet.budget.fit_to_budget`: mirroring,
    then the lowest-weight members, then a wider tile step, each a BUDGET
    event), at ``nnunet_seconds_per_window`` or the preflight's segmentation
    time per window pass (``seconds_per_window``: what the trainer of a
    model trained in the run measured); the fallback of every test volume
    and the post-processing sweep on the validation maps stay reserved.
    Returns the seconds per window pass it sized the prediction with (0 when
    there was nothing to size)."""
    st, cfg = ctx.state, ctx.config
    shapes = [tuple(r.shape) for r in [*st.selection.val, *test] if r.shape]
    if not shapes:
        return 0.0
    spw = float(cfg.nnunet_seconds_per_window) or float(seconds_per_window or 0.0)
    if spw <= 0:
        timed = [tuple(r.shape) for r in preflight.preflight_slice(ctx, st.inventory, st.selection).test
                 if r.shape][:1] or shapes[:1]
        spw = (st.timings.segment_s_per_mvox * stages.mvox(timed[0])
               / max(nnunet_budget.passes(st.model, timed), 1)) if st.timings else 0.0
    left = ctx.deadlines.left() - budget.preflight_reserve_s(st.timings, test_mvox=[stages.mvox(r.shape)
                                                                                       for r in test])
    # its post-processing sweep on the validation maps (timed by the preflight) takes its share too
    left -= budget.sweep_s(st.timings, n_val=len(st.selection.val), config=cfg) if st.model_sweep else 0.0
    fit = nnunet_budget.fit_to_budget(st.model, shapes, seconds_per_window=spw, budget_s=max(left, 0.0),
                                      on_decision=lambda d, msg, **f: ctx.tel.budget(d, msg, budget_s=cfg.budget_s,
                                                                                      **f))
    st.model = fit.predictor
    return spw


def _segment_and_package(ctx: RunContext, test, *, model_ok: bool) -> Path | None:
    st = ctx.state
    with _stage(ctx, StageName.SEGMENT, total=max(len(test), 1)):
        st.fallback_ids = stages.segment(ctx, ctx.reporter(), st.model if model_ok else None, st.best,
                                         st.unet if model_ok else None, test, ctx.folder.test,
                                         deadline=ctx.deadlines.hard, executor=ctx.executor, timings=st.timings,
                                         unet_cost=st.unet_plan.cost, post=_post_defaults(ctx))
    if not test:
        _skip(ctx, StageName.PACKAGE, "no test images")
        return None
    with _stage(ctx, StageName.PACKAGE, total=len(test)):
        return stages.package(ctx, ctx.reporter(), test, ctx.folder.test, ctx.folder.submission)


def _ended(submission: Path | None, test) -> Status:
    """A chain's status once it has segmented and packaged: ``OK`` when it
    wrote the submission or there was nothing to submit, else ``FAILED``."""
    return Status.OK if submission is not None or not test else Status.FAILED


def _inference_chain(ctx: RunContext, test) -> tuple[Status, Path | None]:
    """A run with ``--model``: no training; validate (when validation pairs
    are selected), segment and package with the bundle's model."""
    bundle = _use_bundle(ctx)
    why = f"model from {ctx.config.model_dir}"
    if bundle is None or _preflight(ctx) != Status.OK:
        for name in _training_stages(ctx.config):
            _skip(ctx, name, why if bundle is not None else "model bundle refused")
        ctx.state.model = ctx.state.unet = None
        sub = _segment_and_package(ctx, test, model_ok=False)
        return Status.FAILED if bundle is None else _ended(sub, test), sub
    for name in _LINEAR_TRAINING:
        _skip(ctx, name, why)
    if bundle.kind == PredictorKind.NNUNET:
        _fit_nnunet(ctx, test)
    st = ctx.state
    _apply_plan(ctx, budget.plan_run(st.timings, n_train=0, n_val=len(st.selection.val),
                                     n_test=len(st.inventory.test), mvox_test=_mean_mvox(st.inventory.test),
                                     config=ctx.config, unet=st.unet_plan.cost if st.unet is not None else None,
                                     model_sweep=st.model_sweep))
    if st.selection.val:
        _validate(ctx, model_sweep=st.model_sweep)
    else:
        _skip(ctx, StageName.VALIDATE, "no validation pairs selected")
    sub = _segment_and_package(ctx, test, model_ok=True)
    return _ended(sub, test), sub


def _preflight_failed(ctx: RunContext, pre: Status, test, *, why: str = "") -> tuple[Status, Path | None]:
    """Skip training after a failed or unaffordable preflight (or ``why``
    nothing can train); the fallback segments every test volume."""
    why = why or ("preflight failed" if pre == Status.FAILED else "budget too small to train")
    for name in _training_stages(ctx.config):
        _skip(ctx, name, why)
    sub = _segment_and_package(ctx, test, model_ok=False)
    if pre == Status.FAILED:
        return Status.PREFLIGHT_FAILED, sub
    return _ended(sub, test), sub


def _nnunet_reserve_s(ctx: RunContext, test) -> float:
    """Seconds an nnU-Net training in the run leaves before the hard deadline,
    besides its inference windows (which its trainer keeps back at the pace
    it measures): post-processing and scoring the validation pairs and its
    post-processing sweep, post-processing the test volumes, their fallback
    and packaging, at the preflight's rates."""
    st, cfg = ctx.state, ctx.config
    t = st.timings
    val = st.selection.val
    test_mvox = [stages.mvox(r.shape) for r in test]
    post = (budget.SAFETY_FACTOR * (sum(stages.mvox(r.shape) for r in val) * t.validate_s_per_mvox
                                    + sum(test_mvox) * t.segment_s_per_mvox)
            if t is not None else 0.0)
    return (post + budget.sweep_s(t, n_val=len(val), config=cfg)
            + budget.preflight_reserve_s(t, test_mvox=test_mvox))


def _nnunet_chain(ctx: RunContext, test) -> tuple[Status, Path | None]:
    """``model_kind`` nnunet: the preflight, then nnU-Net planned,
    preprocessed and trained on the run's split (stage ``nnunet``), its
    post-processing chosen on validation (stage ``validate``, as for an
    imported nnU-Net), the test volumes segmented with it; the trained
    model and its choice are the run's bundle (``model/``)."""
    st, cfg = ctx.state, ctx.config
    try:
        nnunet_stage.require_nnunet()
    except nnunet_stage.NnUNetUnavailable as exc:
        ctx.err(str(exc), code="nnunet_unavailable")
        _skip(ctx, StageName.PREFLIGHT, "nnU-Net is not installed")
        return _preflight_failed(ctx, Status.BUDGET, test, why="nnU-Net is not installed")
    pre = _preflight(ctx)
    if pre != Status.OK:
        return _preflight_failed(ctx, pre, test)
    sel, inv = st.selection, st.inventory
    reserve = _nnunet_reserve_s(ctx, test)

    def plan(extra: dict[str, float]) -> None:
        _apply_plan(ctx, budget.plan_run(st.timings, n_train=0, n_val=len(sel.val), n_test=len(inv.test),
                                         mvox_test=_mean_mvox(inv.test), config=cfg, model_sweep=True,
                                         extra_s=extra))

    plan({StageName.NNUNET: max(ctx.deadlines.left() - reserve, 0.0)})
    trained = None
    if not sel.train:
        _skip(ctx, StageName.NNUNET, "no training pairs")
    else:
        spec = nnunet_stage.spec_of(ctx)
        with _stage(ctx, StageName.NNUNET, total=spec.epochs * spec.iterations):
            try:
                trained = nnunet_stage.nnunet(
                    ctx, ctx.reporter(), sel.train, sel.val, spec=spec, reserve_s=reserve,
                    infer_shapes=[tuple(r.shape) for r in [*sel.val, *test] if r.shape],
                    on_projection=lambda s: plan({StageName.NNUNET: s}))
            except (nnunet_stage.TrainFailed, OSError, ValueError) as exc:  # the test volumes get the fallback
                ctx.err(f"nnU-Net training failed: {exc}", subject=str(ctx.folder.nnunet), code="nnunet_failed")
    if trained is not None:
        post = PostChoice.from_best({"low": 0.5, "high": 0.5}, closing_radius=cfg.closing_radius,
                                    min_size=cfg.min_component_voxels)
        nnunet_stage.import_trained(trained, ctx.folder.model, post=post)
        # its post-processing is chosen on validation (st.model_sweep), unless a run stopped after choosing it
        _use_bundle(ctx, ctx.folder.model)
    if st.model is None:
        _skip(ctx, StageName.VALIDATE, "no nnU-Net model")
        sub = _segment_and_package(ctx, test, model_ok=False)
        return _ended(sub, test), sub
    spw = _fit_nnunet(ctx, test, seconds_per_window=trained.seconds_per_window)
    shapes_val = [tuple(r.shape) for r in sel.val if r.shape]
    shapes_test = [tuple(r.shape) for r in test if r.shape]
    plan({StageName.VALIDATE: nnunet_budget.projected_s(st.model, shapes_val, seconds_per_window=spw),
          StageName.SEGMENT: nnunet_budget.projected_s(st.model, shapes_test, seconds_per_window=spw)})
    if sel.val:
        _validate(ctx, model_sweep=st.model_sweep)
        nnunet_stage.record_choice(
            ctx.folder.model, stages.post_choice(_post_defaults(ctx), st.best),
            train_ids=[r.id for r in sel.train], val_ids=[r.id for r in sel.val],
            validation=_validation_summary(st))
    else:
        _skip(ctx, StageName.VALIDATE, "no validation pairs selected")
    sub = _segment_and_package(ctx, test, model_ok=True)
    return _ended(sub, test), sub


def _chain(ctx: RunContext) -> tuple[Status, Path | None]:
    _discovery(ctx)
    inv = ctx.state.inventory
    test = list(inv.test)
    if not test:
        ctx.err(f"{inv.root}: no test images found (test_images/*.tif); nothing to submit",
                subject=str(inv.root), code="no_test")
    if ctx.config.model_dir:
        return _inference_chain(ctx, test)
    if ctx.config.model_kind == ModelKind.NNUNET:
        return _nnunet_chain(ctx, test)
    pre = _preflight(ctx)
    if pre != Status.OK:
        return _preflight_failed(ctx, pre, test)
    _plan(ctx)
    _train(ctx)
    sub = _segment_and_package(ctx, test, model_ok=ctx.state.model is not None)
    return _ended(sub, test), sub


# ---------------------------------------------------------------------------
# stats and entry
# ---------------------------------------------------------------------------
def run_stats(ctx: RunContext, status: Status, submission: Path | None) -> dict[str, Any]:
    """GLOBAL_STATS / ``stats.json``: counts, per-stage status and seconds
    (from the plan), validation scores, coverage."""
    st, plan = ctx.state, ctx.tel.plan
    head = getattr(getattr(ctx.tel, "journal", None), "head", None)
    stage_status = {n: str(plan.status(n)) for n in plan.stage_names if plan.status(n) != Status.PENDING}
    stage_seconds = {n: round(s, 3) for n in plan.stage_names if (s := plan.seconds(n)) is not None}
    return {
        "status": str(status),
        "out_dir": str(ctx.out),
        "submission": str(submission) if submission else None,
        "counts": {
            "pairs_discovered": len(st.inventory.pairs) if st.inventory else 0,
            "train": len(st.selection.train) if st.selection else 0,
            "val": len(st.selection.val) if st.selection else 0,
            "test": len(st.inventory.test) if st.inventory else 0,
            "fallback_volumes": len(st.fallback_ids),
            "warnings": ctx.n_warnings,
            "errors": ctx.n_errors,
        },
        "fallback_ids": list(st.fallback_ids),
        "stage_seconds": stage_seconds,
        "stage_status": stage_status,
        "validation": _validation_summary(st),
        "model_dir": ctx.config.model_dir or None,
        "model_bundle": st.bundle_summary or None,
        "best": {k: v for k, v in st.best.items() if k != "model_path"},
        "coverage": st.audit,
        "elapsed_s": round(time.monotonic() - ctx.t_start, 3),
        "budget_s": ctx.config.budget_s,
        "journal_head": head,
        "resumed": st.resumed,
        "python": platform.python_version(),
    }


def _execute(ctx: RunContext) -> RunResult:
    acquire_lock(ctx.out)
    status = Status.FAILED
    submission: Path | None = None
    stats: dict[str, Any] = {}
    try:
        ctx.state.resumed = ctx.folder.journal.exists()
        ctx.tel.start(run_id=time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
        write_json(ctx.folder.config, ctx.config.to_dict())
        _start_executor(ctx)
        try:
            status, submission = _chain(ctx)
        except Cancelled as exc:
            status = Status.CANCELLED
            if not ctx.tel.cancel_reported:  # a stage reports it; this covers between stages
                ctx.tel.emit(
                    EventKind.CANCELLED,
                    MessagePayload(message=f"run cancelled: {exc}" if str(exc) else "run cancelled"),
                )
        except Exception as exc:  # noqa: BLE001 - reported, run ends failed
            status = Status.FAILED
            ctx.state.error_text = f"{type(exc).__name__}: {exc}"
            ctx.err(f"run failed: {ctx.state.error_text}", code="run_failed")
        stats = run_stats(ctx, status, submission)
        try:
            write_json(ctx.folder.stats, stats)
        except OSError as exc:
            ctx.err(f"{ctx.folder.stats}: could not write: {exc}", code="io")
        ctx.tel.finish(status, submission=str(submission) if submission else None, stats=stats)
    finally:
        _close_executor(ctx)
        release_lock(ctx.out)
    return RunResult(status=status, out_dir=ctx.out, submission=submission, stats=stats,
                     error=ctx.state.error_text)


def _start_executor(ctx: RunContext) -> None:
    """``ctx.executor``: in process without ``config.scheduler`` (one task at a
    time, or ``config.threads`` on threads); else a
    Dask client (``cluster.json`` kept current for the dashboard).  A
    scheduler that cannot be used is an ERROR naming it, and the run goes on
    in process."""
    cfg = ctx.config
    ctx.executor = InProcess()
    if not cfg.scheduler:
        ctx.executor = make_executor(None, threads=local_threads(cfg.threads))
        return
    try:
        executor = make_executor(cfg.scheduler, workers=cfg.workers)
    except Exception as exc:  # noqa: BLE001 - Dask missing, scheduler unreachable: the run still ends with masks
        ctx.err(f"Dask scheduler {cfg.scheduler!r} cannot be used ({type(exc).__name__}: {exc}); "
                "the run goes on in this process", subject=cfg.scheduler, code="scheduler_unavailable")
        return
    ctx.executor = executor
    executor.monitor(ctx.out)
    if executor.workers < cfg.workers:
        ctx.warn(f"Dask scheduler {cfg.scheduler}: {executor.workers} workers, {cfg.workers} asked for; "
                 "the per-volume stages take longer than projected", subject=cfg.scheduler, code="dask_workers")


def _close_executor(ctx: RunContext) -> None:
    executor, ctx.executor = ctx.executor, None
    if executor is not None:
        try:
            executor.close()
        except Exception as exc:  # noqa: BLE001 - the run's results are already written
            ctx.warn(f"closing the Dask client failed: {type(exc).__name__}: {exc}", code="scheduler_close")


def make_context(
    config: RunConfig,
    *,
    cancel: CancelToken | None = None,
    extra_sinks: Sequence[Any] = (),
    console_stream: Any = None,
) -> RunContext:
    """The :class:`RunContext` of a run with ``config`` (creates the output folder)."""
    out = Path(config.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cancel = cancel if cancel is not None else CancelToken()
    t_start = time.monotonic()
    tel = Telemetry(
        out_dir=out,
        stages=stages_of(config),
        config_dict=config.to_dict(),
        console=config.console,
        console_stream=console_stream,
        console_interval_s=config.console_interval_s,
        progress_interval_s=config.progress_interval_s,
        heartbeat_interval_s=config.heartbeat_interval_s,
        stall_after_s=config.stall_after_s,
        progress_max_gap_s=config.progress_max_gap_s,
        extra_sinks=extra_sinks,
        enabled=config.telemetry,
        budget_s=config.budget_s,
        cancel=cancel,
    )
    deadlines = Deadlines(start=t_start, budget_s=config.budget_s, safety_margin_frac=config.safety_margin_frac)
    return RunContext(config=config, out=out, tel=tel, deadlines=deadlines, cancel=cancel, t_start=t_start)


def run_pipeline(
    config: RunConfig,
    *,
    cancel: CancelToken | None = None,
    extra_sinks: Sequence[Any] = (),
    console_stream: Any = None,
) -> RunResult:
    """Run the whole pipeline with ``config``.

    Parameters
    ----------
    config : RunConfig
        The run's configuration (``config.out_dir`` is created).
    cancel : CancelToken, optional
        Cooperative cancellation; every loop checks it. The run then ends
        with a CANCELLED event and a consistent folder.
    extra_sinks : sequence of sinks, optional
        Attached to the event bus besides the journal and console (the
        dashboard's queue sink).
    console_stream : file-like, optional
        Where console lines go (default ``sys.stdout``).

    Returns
    -------
    RunResult
    """
    ctx = make_context(config, cancel=cancel, extra_sinks=extra_sinks, console_stream=console_stream)
    return _execute(ctx)


__all__ = ["NNUNET_STAGES", "STAGES", "stages_of", "RunResult", "RunFailed", "run_pipeline", "make_context", "run_stats", "resolve_unet",
           "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_PREFLIGHT", "EXIT_CANCELLED"]
