"""The mandatory preflight: the whole chain on a small slice, timed.

It runs the same stage functions as the real run (:mod:`.stages`) on
``preflight_frac`` of the training and validation pairs and one test volume,
with reduced iterations and a quiet reporter (no METRIC or PREVIEW: the
dashboard shows the real run), in ``<out>/preflight/``.  What it measures
(:class:`~nx47_pipeline.run.budget.PreflightTimings`, saved to
``preflight/timings.json``) feeds the projection; a rerun in the same folder
reuses it.

The preflight has its own deadline: it must end early enough to leave the
fallback segmentation of every test volume and the packaging.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nx47_pipeline.data.coverage import Selection
from nx47_pipeline.data.discovery import Inventory, VolumeRecord
from nx47_pipeline.io.jsonio import read_json
from nx47_pipeline.io.run_folder import FIT, RunFolder
from nx47_pipeline.io.submission import write_submission
from nx47_pipeline.io.volumes import read_volume
from nx47_pipeline.model.postprocess import fallback_segment
from nx47_pipeline.run import budget, stages
from nx47_pipeline.model.predict import UNetPart
from nx47_pipeline.run.budget import PreflightTimings, UNetCost
from nx47_pipeline.run.context import PostDefaults, RunContext
from nx47_pipeline.run.executor import InProcess
from nx47_pipeline.unet.backend import torch_available
from nx47_pipeline.unet.train import time_train_step

#: Phases of the preflight chain (its progress counts them).
PHASES = ("features", "search", "fit_prox", "unet", "validate", "segment")


class OutOfTime(Exception):
    """The preflight ran past the time the budget leaves it."""


@dataclass(frozen=True)
class PreflightSlice:
    """What the preflight runs on, and what its deadline and timings name."""

    train: list[VolumeRecord]  # the first candidates; a bad one is replaced by the next selected
    candidates: list[VolumeRecord]  # every selected training pair, in order
    val: list[VolumeRecord]
    test: list[VolumeRecord]
    all_test: list[VolumeRecord]  # every test volume of the run: their fallback stays reserved
    data_root: str | None = None  # the resolved data root (what the timings are measured on)


@dataclass(frozen=True, kw_only=True)
class TrainingMeasured:
    """What the preflight timed of the training part of the chain."""

    features_s: float  # load + features + sampling of the training volumes
    n_volumes: int  # training volumes that gave samples
    rows: int  # sample rows they gave
    search_s: float  # the whole search, its fits included
    fit_s: float  # the search's fits
    fit_iters: int  # iterations of the search's fits, summed
    grid_fits: int  # (l1, l2) fits in the grid
    fits_converged: int  # of those, how many converged before their cap
    final_fit_iters: float | None  # iterations of the final fit when it converged, else None


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What the preflight timed, in seconds and million voxels.

    :meth:`timings` is the one place its rates are worked out, for the
    whole chain and for the inference chain of a run with ``--model``
    (``training`` None: its training rates are 0).
    """

    mvox_train: float  # mean million voxels of a training pair
    val_mvox: float  # million voxels of the validation volumes searched and validated, summed
    n_validated: int  # validation volumes validated (0: the segment rate stands in for validation)
    validate_s: float
    test_mvox: float  # mean million voxels of a test volume
    n_test: int
    segment_s: float
    fallback_s: float  # the fallback segmentation of one test volume ...
    fallback_mvox: float  # ... of this many million voxels
    package_s: float
    training: TrainingMeasured | None = None
    unet_s_per_batch: float | None = None
    # the auto-context rounds the run fits (0: none), and what the preflight timed of them: their fit on
    # context_mvox million training voxels, their threshold sweep (sweep_keys candidates) on sweep_mvox
    context_rounds: int = 0
    context_s: float = 0.0
    context_mvox: float = 0.0
    sweep_keys: int = 0
    sweep_s: float = 0.0
    sweep_mvox: float = 0.0

    def timings(self, *, data_root: str | None) -> PreflightTimings:
        """The rates of these measurements (seconds per unit of work).

        When the run fits auto-context rounds but the preflight's slice was
        too small to fit them (fewer than 2 training volumes), their costs
        are estimated from the filter bank's rate: each round computes two
        filter banks per volume it is fitted on and one more per volume it
        segments, and its sweep scores each candidate like a validation."""
        tr = self.training
        validate = (self.validate_s / max(self.val_mvox, 1e-6) if self.n_validated
                    else self.segment_s / max(self.test_mvox, 1e-6))
        segment = self.segment_s / max(self.test_mvox * self.n_test, 1e-6)
        feat = tr.features_s / max(self.mvox_train * tr.n_volumes, 1e-6) if tr else 0.0
        context = 0.0
        rounds = self.context_rounds if tr else 0  # a run with --model fits none
        if rounds and self.context_mvox > 0:
            context = self.context_s / self.context_mvox
        elif rounds:
            context = 2.0 * rounds * feat
            validate += rounds * feat
            segment += rounds * feat
        # the auto-context rounds' sweep, or an imported nnU-Net's (a run with --model)
        sweep = (self.sweep_s / self.sweep_mvox if self.sweep_mvox > 0
                 else self.sweep_keys * validate if rounds else 0.0)
        return PreflightTimings(
            context_s_per_mvox=context,
            context_sweep_s_per_mvox=sweep,
            features_s_per_mvox=feat,
            search_s_per_mvox=max(tr.search_s - tr.fit_s, 1e-3) / max(self.val_mvox, 1e-6) if tr else 0.0,
            fit_s_per_iter_row=tr.fit_s / max(tr.fit_iters * tr.rows, 1) if tr else 0.0,
            validate_s_per_mvox=validate,
            segment_s_per_mvox=segment,
            fallback_s_per_mvox=self.fallback_s / max(self.fallback_mvox, 1e-6),
            package_s_per_volume=self.package_s / self.n_test,
            mvox_train=self.mvox_train,
            mvox_test=self.test_mvox,
            rows_per_volume=tr.rows / tr.n_volumes if tr else 0.0,
            grid_fits=tr.grid_fits if tr else 0,
            unet_s_per_batch=self.unet_s_per_batch,
            search_iters_converged=(tr.fit_iters / max(tr.grid_fits, 1)
                                    if tr and tr.fits_converged == tr.grid_fits else None),
            fit_iters_converged=tr.final_fit_iters if tr else None,
            data_root=data_root,
        )


#: Validation volumes the preflight searches and validates at most: its
#: search costs a filter bank and ``search_top_k`` metric evaluations per
#: volume, so this bounds its fixed cost at full coverage (5 % of 157
#: validation pairs would be 8 volumes, several minutes at 320^3).
PREFLIGHT_MAX_VAL = 2


def preflight_slice(ctx: RunContext, inv: Inventory, sel: Selection) -> PreflightSlice:
    """``ceil(preflight_frac * n)`` training pairs of the selection ``sel``,
    as many validation pairs (at most :data:`PREFLIGHT_MAX_VAL`), one test
    volume of the inventory ``inv`` per task run at once on threads (so the
    segment rate is their throughput; one on Dask)."""
    frac = ctx.config.preflight_frac
    n_tr = budget.ceil_frac(len(sel.train), frac)
    n_va = min(budget.ceil_frac(len(sel.val), frac), PREFLIGHT_MAX_VAL)
    # as many test volumes as tasks run at once on threads (at most preflight_frac of them, at least 1)
    at_once = int(getattr(ctx.executor, "workers", 1) or 1) if getattr(ctx.executor, "shares_cores", False) else 1
    at_once = max(1, min(at_once, budget.ceil_frac(len(inv.test), frac)))
    root = getattr(inv, "root", None)
    return PreflightSlice(train=list(sel.train[:n_tr]), candidates=list(sel.train),
                          val=list(sel.val[:n_va]), test=list(inv.test[:at_once]), all_test=list(inv.test),
                          data_root=str(Path(root).resolve()) if root is not None else None)


def preflight_deadline(ctx: RunContext, sl: PreflightSlice) -> float:
    """Monotonic time by which the preflight must end (the fallback of every
    test volume of the run and the end margin stay)."""
    reserve = budget.preflight_reserve_s(None, test_mvox=[stages.mvox(r.shape) for r in sl.all_test])
    return ctx.deadlines.hard - reserve


def _phase_progress(ctx: RunContext, deadline: float, i: int, n: int, label: str) -> Callable[..., None]:
    """Progress of phase ``i`` of ``n`` (sub-steps prefixed with ``label``);
    raises :class:`OutOfTime` past ``deadline``."""
    def p(done: float, total: float, **kw: Any) -> None:
        if time.monotonic() > deadline:
            raise OutOfTime(f"its deadline passed during {label}")
        sub = kw.pop("substep", "")
        kw["substep"] = f"{label}: {sub}" if sub else label
        ctx.progress(i + done / max(total, 1e-9), n, **kw)
    return p


def leave_on_stop(fn: Callable[[Callable[[int, int], None]], Any], check: Callable[[], None],
                  on_step: Callable[[int, int], None], *, poll_s: float = 0.1) -> Any:
    """``fn(on_step)`` on a helper thread, left at once when ``check()`` raises.

    One layer of a U-Net batch can take seconds on a busy CPU, longer than
    Stop may wait; so the work runs on a daemon thread and this thread
    calls ``check()`` every ``poll_s`` seconds: a Cancelled (or
    :class:`OutOfTime`) propagates at once, and the helper, which checks the
    same token between its layers, ends by itself at its next layer.  Steps
    the helper reports are passed to ``on_step`` from this thread (the
    telemetry is published here only).
    """
    box: dict[str, Any] = {}
    steps: list[tuple[int, int]] = []

    def target() -> None:
        try:
            box["value"] = fn(lambda k, n: steps.append((k, n)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    helper = threading.Thread(target=target, name="nx47-preflight-unet", daemon=True)
    helper.start()
    seen = 0
    while True:
        helper.join(poll_s)
        while seen < len(steps):
            on_step(*steps[seen])
            seen += 1
        if not helper.is_alive():
            break
        check()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_chain(ctx: RunContext, sl: PreflightSlice, dest: Path) -> PreflightTimings:
    """The whole chain on ``sl`` with reduced iterations; raises
    :class:`OutOfTime` past :func:`preflight_deadline`."""
    cfg = ctx.config
    small_iter = max(5, min(cfg.search_max_iter, 30))
    phases = len(PHASES)
    deadline = preflight_deadline(ctx, sl)
    if time.monotonic() > deadline:
        raise OutOfTime("nothing left after reserving the fallback segmentation")

    def phase(i: int) -> Callable[..., None]:
        return _phase_progress(ctx, deadline, i, phases, PHASES[i])

    def quiet(i: int):
        return ctx.reporter(publish=False, progress=phase(i))

    # features: an unusable candidate (bad label, unreadable file: reported by
    # name) is replaced by the next selected pair, so one bad file cannot fail
    # the whole preflight
    # on the run's executor when its tasks share this process's cores (tasks
    # at once on threads): the rates measured are then the stages' throughput;
    # on Dask, in process (the projection shares the volumes out to the workers)
    executor = ctx.executor if getattr(ctx.executor, "shares_cores", False) else InProcess()
    t = time.monotonic()
    want = len(sl.train)
    used: list[VolumeRecord] = []
    paths: list[Path] = []
    rep = quiet(0)
    spare = list(sl.candidates[: want + 5])
    while len(paths) < want and spare:
        batch, spare = spare[: want - len(paths)], spare[want - len(paths):]
        got = stages.features(ctx, rep, batch, dest / "features", n_records=want, offset=len(paths),
                              executor=executor)
        by_id = {r.id: r for r in batch}
        used += [by_id[p.stem] for p in got]
        paths += got
    if not paths:
        raise stages.RunFailed("no selected training pair is usable (each was reported above)")
    samples = stages.load_samples(paths)
    t_feat = time.monotonic() - t
    mvox_train = float(np.mean([stages.mvox(r.shape) for r in used]))

    t = time.monotonic()
    grid = stages.search(ctx, quiet(1), samples, sl.val, dest / "search", max_iter=small_iter, deadline=None)
    t_search_total = time.monotonic() - t
    fit_s = grid["fit_seconds"]
    mvox_val = float(np.sum([stages.mvox(r.shape) for r in sl.val]))

    model = stages.fit(ctx, quiet(2), samples, grid["best"], dest / "model", max_iter=small_iter, deadline=None)
    fit_info = read_json(RunFolder(dest).model / FIT) or {}
    # the auto-context rounds, on the slice's training volumes that gave samples (at least 2)
    ctx_recs = stages.context_volumes(cfg, used) if np.any(model.coef) else []
    t = time.monotonic()
    if ctx_recs:
        model = stages.context(ctx, quiet(2), model, ctx_recs, RunFolder(dest).model, deadline=deadline)
    t_ctx = time.monotonic() - t
    ctx_mvox = float(np.sum([stages.mvox(r.shape) for r in ctx_recs])) if getattr(model, "rounds", ()) else 0.0
    unet_s_per_batch = None
    if cfg.use_unet is not False and torch_available() and deadline - time.monotonic() > 120:
        unet_phase = phase(3)
        unet_phase(0, 1, message="timing one U-Net training batch")

        def unet_check() -> None:  # Stop and the deadline
            ctx.cancel.raise_if_cancelled()
            if time.monotonic() > deadline:
                raise OutOfTime("its deadline passed during unet")

        unet_s_per_batch = leave_on_stop(
            lambda on_step: time_train_step(stages.unet_params(ctx), device=cfg.unet_device,
                                            check=unet_check, on_step=on_step),
            unet_check,
            lambda k, n: unet_phase(k, n, message=f"U-Net timing batch {k} of {n}"))
    phase(3)(1, 1)

    t = time.monotonic()
    scores = stages.validate(ctx, quiet(4), model, grid["best"], None, sl.val, dest / "val", deadline=None,
                             executor=executor)
    t_val = time.monotonic() - t
    t_sweep, sweep_mvox = (_timed_sweep(ctx, quiet(4), grid["best"], sl.val, dest / "val", scores, deadline,
                                        stages.CONTEXT_SWEEP) if getattr(model, "rounds", ()) else (0.0, 0.0))

    t = time.monotonic()
    stages.segment(ctx, quiet(5), model, grid["best"], None, sl.test, dest / "test", deadline=None,
                   executor=executor)
    t_seg = time.monotonic() - t
    mvox_test = float(np.mean([stages.mvox(r.shape) for r in sl.test]))

    t_fb, t_pack, vol_shape = _fallback_and_package(ctx, sl, dest, phase(5), PostDefaults.of_config(cfg))
    ctx.progress(phases, phases, message="preflight chain complete")
    grid_fits = len(budget.search_grid(cfg).points)
    training = TrainingMeasured(
        features_s=t_feat, n_volumes=len(paths), rows=len(samples.y), search_s=t_search_total, fit_s=fit_s,
        fit_iters=grid["fit_iters"], grid_fits=grid_fits, fits_converged=grid.get("fit_converged", 0),
        final_fit_iters=float(fit_info["n_iter"]) if fit_info.get("converged") else None)
    return Measured(
        mvox_train=mvox_train, val_mvox=mvox_val, n_validated=len(sl.val), validate_s=t_val,
        test_mvox=mvox_test, n_test=len(sl.test), segment_s=t_seg,
        fallback_s=t_fb, fallback_mvox=stages.mvox(vol_shape), package_s=t_pack,
        training=training, unet_s_per_batch=unet_s_per_batch,
        context_rounds=cfg.context_rounds, context_s=t_ctx, context_mvox=ctx_mvox,
        sweep_keys=stages.sweep_count(cfg, stages.CONTEXT_SWEEP, grid["best"]), sweep_s=t_sweep,
        sweep_mvox=sweep_mvox,
    ).timings(data_root=sl.data_root)


def _timed_sweep(ctx: RunContext, report, best: dict[str, Any], val: Sequence[VolumeRecord], dest: Path,
                 scores: dict[str, dict[str, float]], deadline: float, sweep: stages.Sweep,
                 defaults: PostDefaults | None = None) -> tuple[float, float]:
    """Run ``sweep`` on the validation maps in ``dest`` as the run will
    (:func:`~nx47_pipeline.run.stages.sweep_thresholds`): ``(seconds, million
    voxels swept)``, ``(0, 0)`` when nothing was validated."""
    swept = stages.search_volumes(ctx.config, val) if scores else []
    t = time.monotonic()
    if swept:
        stages.sweep_thresholds(ctx, report, best, val, dest, scores, deadline=deadline, sweep=sweep,
                               defaults=defaults)
    return time.monotonic() - t, float(np.sum([stages.mvox(r.shape) for r in swept]))


def _fallback_and_package(ctx: RunContext, sl: PreflightSlice, dest: Path, progress: Callable[..., None],
                          post: PostDefaults) -> tuple[float, float, tuple[int, ...]]:
    """Time the fallback segmentation (``post``'s) of the first test volume and the
    packaging of the slice's masks: ``(fallback_s, package_s, shape)``.
    ``progress(done, total, substep=...)`` is the phase they end; its
    sub-steps name theirs (the phase's counter stays where it is)."""
    progress(1, 1, substep="fallback: reading the test volume")
    vol = read_volume(sl.test[0].image_path, kind="image")
    t = time.monotonic()
    fallback_segment(vol, closing_radius=post.closing_radius, min_size=post.min_size,
                     on_progress=lambda d, t_, what: progress(1, 1, substep=f"fallback: {what}"))
    t_fb = time.monotonic() - t
    t = time.monotonic()
    write_submission([(r.id, dest / "test" / f"{r.id}.tif") for r in sl.test], RunFolder(dest).submission,
                     on_progress=lambda d, t_, what: progress(1, 1, substep=f"packaging: {what}"))
    t_pack = time.monotonic() - t
    return t_fb, t_pack, tuple(vol.shape)


def run_inference_chain(ctx: RunContext, sl: PreflightSlice, dest: Path, *, model: Any, best: dict[str, Any],
                        unet: UNetPart | None, unet_cost: UNetCost | None,
                        post: PostDefaults, sweep: bool = False) -> PreflightTimings:
    """The inference part of the chain on ``sl`` (a run with ``--model``):
    validation of one pair when there is one (with ``sweep``, an imported
    nnU-Net's: then its post-processing sweep, :data:`~nx47_pipeline.run.stages.MODEL_SWEEP`),
    model segmentation of one test volume, the fallback and the packaging,
    timed, with the bundle's ``model``, ``best``, ``unet`` (and its
    ``unet_cost``) and post-processing defaults ``post``.  Training rates are 0."""
    deadline = preflight_deadline(ctx, sl)
    if time.monotonic() > deadline:
        raise OutOfTime("nothing left after reserving the fallback segmentation")
    n = 4

    def step(i: int, label: str):
        return ctx.reporter(publish=False, progress=_phase_progress(ctx, deadline, i, n, label))

    t = time.monotonic()
    val = sl.val[:1]
    scores = stages.validate(ctx, step(0, "validate"), model, best, unet, val, dest / "val", deadline=None,
                             post=post)
    t_val = time.monotonic() - t
    mvox_val = float(np.sum([stages.mvox(r.shape) for r in val]))
    t_sweep, sweep_mvox = (_timed_sweep(ctx, step(0, "validate"), best, val, dest / "val", scores, deadline,
                                        stages.MODEL_SWEEP, defaults=post) if sweep else (0.0, 0.0))
    t = time.monotonic()
    stages.segment(ctx, step(1, "segment"), model, best, unet, sl.test, dest / "test", deadline=None,
                   unet_cost=unet_cost, post=post)
    t_seg = time.monotonic() - t
    mvox_test = float(np.mean([stages.mvox(r.shape) for r in sl.test]))
    t_fb, t_pack, vol_shape = _fallback_and_package(ctx, sl, dest, _phase_progress(ctx, deadline, 1, n, "segment"),
                                                    post)
    ctx.progress(n, n, message="inference preflight complete")
    return Measured(
        mvox_train=float(np.mean([stages.mvox(r.shape) for r in val])) if val else mvox_test,
        val_mvox=mvox_val, n_validated=len(val), validate_s=t_val,
        test_mvox=mvox_test, n_test=len(sl.test), segment_s=t_seg,
        fallback_s=t_fb, fallback_mvox=stages.mvox(vol_shape), package_s=t_pack,
        sweep_s=t_sweep, sweep_mvox=sweep_mvox,
    ).timings(data_root=sl.data_root)


def check_slice(sl: PreflightSlice, n_train_selected: int, n_val_selected: int) -> None:
    """Raise :class:`~nx47_pipeline.run.stages.RunFailed` when the slice cannot run."""
    if not sl.train or not sl.val:
        raise stages.RunFailed(
            f"preflight needs at least one training and one validation pair; "
            f"selected {n_train_selected} training and {n_val_selected} validation pairs"
        )
    if not sl.test:
        raise stages.RunFailed("preflight needs at least one test image; none found")


__all__: Sequence[str] = ["PHASES", "OutOfTime", "PreflightSlice", "Measured", "TrainingMeasured",
                          "preflight_slice", "preflight_deadline", "run_chain", "run_inference_chain", "check_slice"]
