"""The run's stages, one function each.

Every function takes the :class:`~nx47_pipeline.run.context.RunContext`
(config, output folder, deadlines), a
:class:`~nx47_pipeline.run.context.Reporter` (how it talks to the user) and
its inputs as arguments; it writes its artifacts in the output folder and
returns its outputs.  The orchestrator (:mod:`nx47_pipeline.run.orchestrator`)
calls them in order, wraps each in a STEP begin/end and stores the outputs in
the run's state; the preflight (:mod:`nx47_pipeline.run.preflight`) calls the
same functions on a small slice with a quiet reporter.

A stage that finds its artifact already on disk (a rerun in the same folder)
reads it instead of computing it again, which is how a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nx47_pipeline.data.coverage import Selection, select_coverage
from nx47_pipeline.data.discovery import Inventory, VolumeRecord, discover, resolve_data_root
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.run_folder import (CONTEXT_POSTPROCESS, CONTEXT_THRESHOLDS, FIT, MODEL_POSTPROCESS,
                                        MODEL_THRESHOLDS, MODEL_WEIGHTS, UNET_POSTPROCESS, UNET_THRESHOLDS)
from nx47_pipeline.io.submission import PackagingError, write_submission
from nx47_pipeline.io.volumes import VolumeError, read_pair, read_volume, write_volume
from nx47_pipeline.model.features import feature_names
from nx47_pipeline.model.context import ContextModel, load_rounds
from nx47_pipeline.model.context import fit_context as fit_context_rounds
from nx47_pipeline.model.linear import LogisticModel, fit_prox, prior_shift
from nx47_pipeline.model.predict import UNetPart
from nx47_pipeline.model.metric import VolumeScore, score_volume
from nx47_pipeline.model.postprocess import surface_ridge, uint8_to_probability
from nx47_pipeline.model.predictor import LinearPredictor, PostChoice, Predictor
from nx47_pipeline.model.search import choose_postprocess, run_search, threshold_pairs
from nx47_pipeline.run import budget
from nx47_pipeline.run.budget import PreflightTimings, UNetCost
from nx47_pipeline.run.context import PostDefaults, ProgressFn, Reporter, RunContext, Samples
from nx47_pipeline.run.executor import InProcess
from nx47_pipeline.run.tasks import (
    FeatureJob,
    Outcome,
    SegmentJob,
    Segmenter,
    ValidateJob,
    features_task,
    segment_task,
    validate_task,
    validation_record,
)
from nx47_pipeline.telemetry.events import (
    BudgetDecision,
    CoverageAuditPayload,
    MetricName,
    PreviewPayload,
    Severity,
    Split,
)
from nx47_pipeline.unet.params import UNetParams, params_from_config
from nx47_pipeline.unet.patches import extract_patches
from nx47_pipeline.unet.train import train_unet


class RunFailed(RuntimeError):
    """A stage failed in a way the run cannot go on from."""


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def volume_seed(seed: int, volume_id: str) -> int:
    """The per-volume sampling seed (stable across runs and machines)."""
    return (seed * 1_000_003 + zlib.crc32(volume_id.encode())) % (2**31 - 1)


def mvox(shape: Sequence[int] | None) -> float:
    """Million voxels of ``shape`` (0 when unknown)."""
    if not shape:
        return 0.0
    return float(np.prod(shape)) / 1e6


def suggest_slices(shape: Sequence[int], n: int) -> dict[str, list[int]]:
    """``n`` evenly spaced slice indices per axis for the dashboard's previews."""
    out = {}
    for axis, size in zip("zyx", shape):
        k = max(1, n)
        out[axis] = sorted({int(round(size * (i + 1) / (k + 1))) for i in range(k)})
    return out


def preview_payload(
    ctx: RunContext, rec: VolumeRecord, split: Split, dest: Path, *, score: float | None = None, shape=None
) -> PreviewPayload:
    """PREVIEW of a validation or test volume whose mask is in ``dest``."""
    shape = list(shape or rec.shape or [])
    prob = dest / f"{rec.id}_prob.tif"
    return PreviewPayload(
        volume_id=rec.id, split=split, shape=shape,
        image_path=str(rec.image_path),
        label_path=str(rec.label_path) if rec.label_path else None,
        pred_path=str((dest / f"{rec.id}.tif").relative_to(ctx.out)),
        prob_path=str(prob.relative_to(ctx.out)) if prob.exists() else None,
        slices=suggest_slices(shape, ctx.config.preview_slices) if shape else {},
        score=score,
    )


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------
def discovery(ctx: RunContext, report: Reporter) -> tuple[Inventory, Selection]:
    """Resolve the data root, inventory it (issues reported by name) and
    select the training / validation coverage."""
    cfg = ctx.config
    root = resolve_data_root(cfg.data_root)
    report.progress(0, 1, message=f"data root {root}")

    def on_progress(done: int, total: int, what: str) -> None:
        report.progress(done / max(total, 1) * 0.9, 1.0, file=str(what), file_done=done, file_total=total)

    inv = discover(root, on_progress=on_progress)
    for issue in inv.issues:
        if issue.level == Severity.ERROR:
            report.err(issue.message, subject=issue.subject, code=issue.code)
        else:
            report.warn(issue.message, subject=issue.subject, code=issue.code)
    sel = select_coverage(
        inv.pairs, max_train_volumes=cfg.max_train_volumes, max_val_volumes=cfg.max_val_volumes, seed=cfg.seed,
    )
    for w in sel.warnings:
        report.warn(w, code="coverage")
    return inv, sel


def coverage_audit(inv: Inventory, sel: Selection) -> CoverageAuditPayload:
    """COVERAGE_AUDIT of a selection."""
    a = sel.audit
    return CoverageAuditPayload(
        pair_count_discovered=int(a["pair_count_discovered"]),
        pair_count_selected_for_training=int(a["pair_count_selected_for_training"]),
        coverage_pct_selected_vs_discovered=float(a["coverage_pct_selected_vs_discovered"]),
        max_train_volumes=int(a["max_train_volumes"]),
        max_val_volumes=int(a["max_val_volumes"]),
        n_train=len(sel.train),
        n_val=len(sel.val),
        n_test=len(inv.test),
        train_ids=[r.id for r in sel.train],
        val_ids=[r.id for r in sel.val],
    )


# ---------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------
def _report_outcome(report: Reporter, out: Outcome) -> None:
    """The warnings, errors and array traces a task returned, on the bus."""
    for note in out.notes:
        (report.err if note.level == Severity.ERROR else report.warn)(note.message, subject=note.subject, code=note.code)
    for payload in out.traces:
        report.emit_trace(payload)


def _lost_worker(report: Reporter, stage: str):
    def on_lost(address: str) -> None:
        report.warn(f"Dask worker {address} left the cluster during {stage}; its tasks are run again on the "
                    "other workers", subject=address, code="worker_lost")
    return on_lost


def features(
    ctx: RunContext,
    report: Reporter,
    records: Sequence[VolumeRecord],
    dest: Path,
    *,
    deadline: float | None = None,
    n_records: int | None = None,
    offset: int = 0,
    executor: Any = None,
) -> list[Path]:
    """Class-balanced voxel samples of ``records``, one ``<id>.npz`` each
    (``X``, ``y`` and the labelled voxels' class ``counts``), in the order of
    ``records``.

    Unreadable pairs and labels without both classes are reported by name
    and left out.  ``n_records``/``offset`` place these records in a larger
    loop for progress and for the per-volume sample size.  ``executor``
    (default in process) runs one :func:`~nx47_pipeline.run.tasks.features_task`
    per volume; on Dask their progress names the worker.
    """
    cfg = ctx.config
    executor = executor if executor is not None else InProcess()
    dest.mkdir(parents=True, exist_ok=True)
    n = n_records if n_records is not None else len(records)
    per_class = max(1, min(cfg.samples_per_class, cfg.max_total_samples // max(2 * n, 1)))
    done_paths: dict[int, Path] = {}
    jobs: list[FeatureJob] = []
    n_done = 0
    for j, rec in enumerate(records):
        path = dest / f"{rec.id}.npz"
        if path.exists():
            done_paths[j] = path
            n_done += 1
            report.progress(offset + n_done, n, file=rec.id, file_done=offset + n_done, file_total=n,
                            message="cached")
            continue
        jobs.append(FeatureJob(index=j, volume_id=rec.id, image_path=rec.image_path, label_path=rec.label_path,
                               dest=path, scales=tuple(cfg.feature_scales), per_class=per_class,
                               seed=volume_seed(cfg.seed, rec.id), max_slabs=cfg.sample_slabs or None,
                               trace=offset + j == 0 and cfg.array_trace))

    def on_progress(index: int, done: int, total: int, what: str, frac: float, worker: str) -> None:
        rec = records[index]
        report.progress(offset + n_done + frac, n, file=rec.id, file_done=offset + n_done, file_total=n,
                        substep=what, substep_done=done, substep_total=total, worker=worker)

    try:
        for _, res in executor.map(features_task, jobs, on_progress=on_progress, check=_checker(ctx, deadline),
                                   on_lost=_lost_worker(report, "features")):
            rec = records[res.index]
            _report_outcome(report, res)
            n_done += 1
            if res.ok:
                done_paths[res.index] = dest / f"{rec.id}.npz"
                report.preview(PreviewPayload(
                    volume_id=rec.id, split=Split.TRAIN, shape=list(res.shape or rec.shape or []),
                    image_path=str(rec.image_path), label_path=str(rec.label_path),
                    slices=suggest_slices(res.shape, cfg.preview_slices) if res.shape else {},
                ))
            report.progress(offset + n_done, n, file=rec.id, file_done=offset + n_done, file_total=n,
                            worker=res.worker)
    except _DeadlineHit:
        report.deadline_hit("features", f"{len(records) - n_done} training volumes left out")
    return [done_paths[j] for j in sorted(done_paths)]


class _DeadlineHit(Exception):
    """The training deadline passed while a stage's tasks were running."""


def _checker(ctx: RunContext, deadline: float | None):
    """Called by the executor between tasks: Stop, then the deadline."""
    def check() -> None:
        ctx.cancel.raise_if_cancelled()
        if deadline is not None and time.monotonic() > deadline:
            raise _DeadlineHit
    return check


def load_samples(paths: Iterable[Path]) -> Samples:
    """Concatenate per-volume samples; the prior shift maps the balanced
    sample's class prior to the labelled voxels' (probabilities mean what
    they say)."""
    Xs, ys = [], []
    counts = np.zeros(2, dtype=np.int64)
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            Xs.append(z["X"])
            ys.append(z["y"])
            counts += z["counts"]
    X, y = np.concatenate(Xs), np.concatenate(ys)
    return Samples(X=X, y=y, prior_shift=prior_shift(counts, y))


# ---------------------------------------------------------------------------
# search and fit
# ---------------------------------------------------------------------------
def search(
    ctx: RunContext, report: Reporter, samples: Samples, val: Sequence[VolumeRecord], dest: Path,
    *, max_iter: int, deadline: float | None,
) -> dict[str, Any]:
    """The (L1, L2) x threshold x closing radius grid search scored with the
    competition metric on the first ``search_max_val_volumes`` of ``val``,
    then the dust and hole plug sizes of its best
    (:func:`nx47_pipeline.model.search.run_search`)."""
    cfg = ctx.config
    return run_search(
        samples.X, samples.y, search_volumes(cfg, val),
        dest=dest,
        **budget.search_grid_args(cfg),  # the grid the planner counts (budget.search_units)
        scales=cfg.feature_scales,
        max_iter=max_iter, tol=cfg.fit_tol,
        intercept_shift=samples.prior_shift,
        deadline=deadline,
        progress=report.progress,
        on_metric=lambda name, value, extra: report.metric(MetricName(name), value, **extra),
        on_warning=lambda msg, subject, code: report.warn(msg, subject=subject, code=code),
        on_deadline=lambda what: report.deadline_hit("search", what),
    )


def search_volumes(cfg, val: Sequence[VolumeRecord]) -> list[VolumeRecord]:
    """The validation volumes the search scores its grid on (a bounded subset:
    its cost grows with volumes x grid points; validation scores every one):
    the first :func:`~nx47_pipeline.run.budget.search_val_count` of them."""
    return list(val[:budget.search_val_count(len(val), cfg)])


def fit(
    ctx: RunContext, report: Reporter, samples: Samples, best: dict[str, Any], dest: Path,
    *, max_iter: int, deadline: float | None, total: float | None = None,
) -> LogisticModel:
    """``fit_prox`` at the search's best (L1, L2), warm-started from the
    search's model; ``dest/model.npz`` and ``dest/fit.json``.  Progress
    counts iterations out of ``total`` (default ``max_iter``: more when the
    stage goes on with the auto-context rounds)."""
    cfg = ctx.config
    path = dest / MODEL_WEIGHTS
    if path.exists():
        report.progress(max_iter, total or max_iter, message="model cached")
        return LogisticModel.load(path)
    warm = None
    if best.get("model_path") and Path(best["model_path"]).exists():
        warm = LogisticModel.load(best["model_path"])
    last_emit = [0.0]

    def on_iter(i: int, n: int, objective: float) -> None:
        report.progress(i, total or n, substep="iteration", substep_done=i, substep_total=n,
                        message=f"objective {objective:.6g}")
        now = time.monotonic()
        if i <= 1 or i == n or now - last_emit[0] >= cfg.progress_interval_s:
            last_emit[0] = now
            report.metric(MetricName.FIT_PROX_OBJECTIVE, float(objective), step=int(i))

    report.progress(0, total or max_iter, substep=f"standardising {len(samples.y)} samples", substep_done=0,
                    substep_total=max_iter)
    res = fit_prox(
        samples.X, samples.y, l1=best["l1"], l2=best["l2"], max_iter=max_iter, tol=cfg.fit_tol,
        time_cap_s=cfg.fit_time_cap_s, deadline=deadline, on_iter=on_iter,
        feature_names=feature_names(cfg.feature_scales), scales=cfg.feature_scales,
        warm_start=warm, intercept_shift=samples.prior_shift,
    )
    if res.stopped_reason in ("deadline", "time_cap"):
        report.deadline_hit("fit_prox", f"stopped after {res.n_iter} iterations ({res.stopped_reason})")
    report.trace("model/coef", np.asarray(res.model.coef, dtype=np.float32))
    dest.mkdir(parents=True, exist_ok=True)
    res.model.save(path)
    write_json(dest / FIT, {
        "n_iter": res.n_iter, "converged": res.converged, "stopped_reason": res.stopped_reason,
        "objective": res.objective[-1] if res.objective else None, "seconds": res.seconds,
        "l1": best["l1"], "l2": best["l2"],
    })
    return res.model


def context_volumes(cfg, train: Sequence[VolumeRecord]) -> list[VolumeRecord]:
    """The training volumes the auto-context rounds are fitted on: the first
    ``context_max_volumes`` (0 = all); none when ``context_rounds`` is 0 or
    fewer than 2 volumes (the rounds' maps are cross-fitted on two halves)."""
    n = budget.context_count(len(train), cfg)
    return list(train[:n])


def context(
    ctx: RunContext, report: Reporter, model: LogisticModel, train: Sequence[VolumeRecord], dest: Path,
    *, deadline: float | None, start: float = 0.0, total: float = 1.0,
) -> LogisticModel | ContextModel:
    """The auto-context rounds on top of ``model``
    (:func:`nx47_pipeline.model.context.fit_context`) on
    :func:`context_volumes` of ``train`` (volumes whose features were
    computed), written to ``dest`` (``context_<k>.npz``, ``context.json``)
    and read back from there by a resumed run.  Progress goes from ``start``
    to ``total``.  Returns ``model`` alone when no round is fitted: rounds
    off, fewer than 2 volumes, or the deadline or a file problem stopped the
    fit (a WARNING says which)."""
    cfg = ctx.config
    try:
        cached = load_rounds(model, dest)
    except ValueError as exc:
        report.warn(f"auto-context rounds not reused: {exc}", subject=str(dest), code="context_unreadable")
        cached = None
    if cached is not None and len(cached.rounds) == cfg.context_rounds:
        report.progress(total, total, message="auto-context rounds cached")
        return cached
    recs = context_volumes(cfg, train)
    if not recs:
        return model
    span = total - start
    check = _checker(ctx, deadline)
    last = [""]

    def on_progress(done, n, what):
        check()
        last[0] = what
        report.progress(start + span * float(done) / max(float(n), 1.0), total, substep=f"auto-context: {what}",
                        substep_done=int(done), substep_total=int(n))

    def loader(rec: VolumeRecord):
        return lambda: read_pair(rec.image_path, rec.label_path)

    t0 = time.monotonic()
    try:
        # the rounds' penalties: the grids' lightest (twice the features of the base model, fitted on every
        # volume's rows: measured on variant b, 0.544 against 0.510 with the base model's heavier L2)
        stacked = fit_context_rounds([loader(r) for r in recs], model, rounds=cfg.context_rounds,
                                     rows_per_volume=cfg.samples_per_class, max_iter=cfg.search_max_iter,
                                     l1=min(cfg.l1_grid), l2=min(cfg.l2_grid), seed=cfg.seed,
                                     on_progress=on_progress)
    except _DeadlineHit:
        report.deadline_hit("fit_prox", f"auto-context rounds stopped at {last[0]}; fit_prox alone is kept")
        return model
    except (VolumeError, ValueError) as exc:
        report.warn(f"auto-context rounds not fitted: {exc}; fit_prox alone is kept", subject=str(dest),
                    code="context_failed")
        return model
    stacked.save_rounds(dest, volumes=[r.id for r in recs], seconds=time.monotonic() - t0)
    report.progress(total, total, message=f"{len(stacked.rounds)} auto-context rounds on {len(recs)} volumes")
    return stacked


# ---------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------
def unet_params(ctx: RunContext) -> UNetParams:
    return params_from_config(ctx.config)


def unet(ctx: RunContext, report: Reporter, train: Sequence[VolumeRecord], dest: Path, *,
         model: LogisticModel | ContextModel | None = None, deadline: float | None = None,
         tta: bool = False) -> UNetPart | None:
    """Train the U-Net on patches of ``train`` with checkpoints in ``dest``
    until ``deadline`` (default: the training deadline); None when it
    completed no epoch.  With ``prior`` parameters (the default) each patch
    also carries ``model``'s probabilities, the network's second input.
    ``tta``: the returned part predicts with flip TTA (the run's budget
    decision)."""
    cfg = ctx.config
    params = unet_params(ctx)
    if params.prior and model is None:
        raise ValueError("the U-Net takes the fit_prox probabilities as input: model must be given")
    steps = params.epochs + 1

    def volumes():
        for rec in train:
            try:
                img, lab = read_pair(rec.image_path, rec.label_path)
            except VolumeError:
                continue  # reported by the features stage
            yield rec.id, img, lab

    def on_file(done: int, total: int, what: str) -> None:
        report.progress(done / max(total, 1), steps, substep="patches", file=what,
                        file_done=done, file_total=total)

    patches = extract_patches(
        volumes(), patch=params.patch, patches_per_volume=params.patches_per_volume,
        label_guided_frac=params.label_guided_frac, seed=cfg.seed, on_file=on_file, n_volumes=len(train),
        prior=(lambda region: model.predict_volume(region)) if params.prior else None,
        prior_margin=int(model.halo) + 1 if params.prior else 0,
    )

    def on_batch(epoch, epochs, batch, n_batches, loss):  # epoch counts from 1
        report.progress(epoch + batch / max(n_batches, 1), steps, substep=f"epoch {epoch}/{epochs} batch",
                        substep_done=batch, substep_total=n_batches)
        report.metric(MetricName.UNET_BATCH_LOSS, float(loss), step=int((epoch - 1) * n_batches + batch))

    def on_epoch(epoch, epochs, train_loss, val_loss):
        report.metric(MetricName.UNET_EPOCH_LOSS, float(train_loss), step=int(epoch), val_loss=val_loss)

    res = train_unet(
        patches, val=None, params=params, device=cfg.unet_device, checkpoint_dir=dest,
        resume=True, deadline=ctx.deadlines.training if deadline is None else deadline, on_batch=on_batch,
        on_epoch=on_epoch, check=ctx.cancel.raise_if_cancelled,
    )
    if res.stopped_reason == "deadline":
        report.deadline_hit("unet", f"training stopped after {res.epochs_done} epochs")
    if res.epochs_done == 0:
        report.warn("the U-Net completed no epoch; segmentation uses the fit_prox model alone",
                    code="unet_untrained")
        return None
    return UNetPart(net=res.model, params=dataclasses.replace(params, tta_flip=bool(tta)), device=cfg.unet_device,
                    fuse=cfg.unet_fuse)


# ---------------------------------------------------------------------------
# validate and segment
# ---------------------------------------------------------------------------
def _defaults(ctx: RunContext, post: PostDefaults | None) -> PostDefaults:
    """``post``, else the run's config's."""
    return post if post is not None else PostDefaults.of_config(ctx.config)


def closing_of(post: PostDefaults, best: dict[str, Any]) -> tuple[int, int, int]:
    """The closing radius of ``best`` (the search's or the U-Net's choice);
    ``post.closing_radius`` where it names none (results from before the choice)."""
    return _radius(post, best.get("closing_radius"))


def _radius(post: PostDefaults, value) -> tuple[int, int, int]:
    """``value`` as a radius tuple; ``post.closing_radius`` when None (records from before the choice)."""
    return tuple(int(v) for v in (post.closing_radius if value is None else value))


def min_size_of(post: PostDefaults, best: dict[str, Any]) -> int:
    """The dust size of ``best`` (chosen on validation); ``post.min_size``
    where it names none (results and bundles from before the choice)."""
    value = best.get("min_size")
    return int(post.min_size if value is None else value)


def plug_size_of(best: dict[str, Any]) -> int:
    """The hole plug size of ``best`` (chosen on validation); 0 (no plugging)
    where it names none (results and bundles from before the choice)."""
    return int(best.get("plug_size") or 0)


def post_choice(post: PostDefaults, best: dict[str, Any]) -> PostChoice:
    """The post-processing of ``best`` (``post`` where it names none)."""
    return PostChoice.from_best(best, closing_radius=post.closing_radius, min_size=post.min_size)


def segmenter(ctx: RunContext, model: LogisticModel | Predictor, best: dict[str, Any],
              unet_part: UNetPart | None, post: PostDefaults | None = None) -> Segmenter:
    """The model and post-processing of this run, for validate and segment tasks:
    ``model`` is a linear model (fused with ``unet_part`` when given) or any
    :class:`~nx47_pipeline.model.predictor.Predictor` (a bundle's); ``post``:
    the defaults of the post-processing (default: the config's)."""
    predictor = model if isinstance(model, Predictor) else LinearPredictor(model, unet_part)
    return Segmenter(predictor=predictor, post=post_choice(_defaults(ctx, post), best))


def validate(
    ctx: RunContext, report: Reporter, model: LogisticModel, best: dict[str, Any], unet_part: UNetPart | None,
    val: Sequence[VolumeRecord], dest: Path, *, deadline: float | None, executor: Any = None,
    post: PostDefaults | None = None,
) -> dict[str, dict[str, float]]:
    """Segment and score each validation volume (``dest/<id>.tif`` and
    ``<id>.json``), one :func:`~nx47_pipeline.run.tasks.validate_task` each on
    ``executor`` (default in process); returns the scores by id in the order
    of ``val``.  ``post``: the post-processing's defaults (default: the config's)."""
    executor = executor if executor is not None else InProcess()
    dest.mkdir(parents=True, exist_ok=True)
    n = len(val)
    scores: dict[str, dict[str, float]] = {}
    seg = segmenter(ctx, model, best, unet_part, post)
    jobs: list[ValidateJob] = []
    n_done = 0

    def publish(i: int, rec: VolumeRecord, cached: dict[str, float], worker: str = "") -> None:
        scores[rec.id] = cached
        report.metric(MetricName.VAL_SCORE, float(cached["score"]), step=i, volume_id=rec.id,
                      surface_dice=cached["surface_dice"], voi=cached["voi"], topo=cached["topo"])
        report.preview(preview_payload(ctx, rec, Split.VAL, dest, score=float(cached["score"])))
        report.progress(n_done, n, file=rec.id, file_done=n_done, file_total=n, worker=worker)

    for i, rec in enumerate(val):
        cached = read_json(dest / f"{rec.id}.json") if (dest / f"{rec.id}.tif").exists() else None
        if cached is not None:
            n_done += 1
            publish(i, rec, cached)
            continue
        jobs.append(ValidateJob(index=i, volume_id=rec.id, image_path=rec.image_path, label_path=rec.label_path,
                                dest=dest, segmenter=seg))

    def on_progress(index: int, done: int, total: int, what: str, frac: float, worker: str) -> None:
        report.progress(n_done + frac, n, file=val[index].id, file_done=n_done, file_total=n, substep=what,
                        substep_done=done, substep_total=total, worker=worker)

    try:
        for _, res in executor.map(validate_task, jobs, on_progress=on_progress, check=_checker(ctx, deadline),
                                   on_lost=_lost_worker(report, "validate")):
            _report_outcome(report, res)
            n_done += 1
            if res.ok:
                publish(res.index, val[res.index], res.data, res.worker)
            else:
                report.progress(n_done, n, file=res.volume_id, file_done=n_done, file_total=n, worker=res.worker)
    except _DeadlineHit:
        report.deadline_hit("validate", f"{n - n_done} validation volumes not scored")
    return {rec.id: scores[rec.id] for rec in val if rec.id in scores}


#: High thresholds of the U-Net's own hysteresis pairs (``low = high -
#: hysteresis_gap``), scored on its validation maps: its probabilities are
#: sharper than fit_prox's and its best pair was higher (docs/model.md).
UNET_THRESHOLD_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: A post-processing choice: (low, high, thin, closing radius, dust size, hole plug size).
PostKey = tuple[float, float, bool, tuple[int, int, int], int, int]


def _post_key(post: PostDefaults, best: dict[str, Any]) -> PostKey:
    return (float(best["low"]), float(best["high"]), bool(best.get("thin", False)), closing_of(post, best),
            min_size_of(post, best), plug_size_of(best))


def _same_key(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return (np.allclose(a[:2], b[:2]) and bool(a[2]) == bool(b[2]) and tuple(a[3]) == tuple(b[3])
            and int(a[4]) == int(b[4]) and int(a[5]) == int(b[5]))


def _recorded_key(post: PostDefaults, record: dict[str, Any], prefix: str) -> PostKey:
    """The choice ``<prefix>_...`` of a ``unet_thresholds.json`` (``prefix`` ``search`` or ``chosen``);
    fields missing in records from before they were chosen take the run's defaults."""
    pair = record["search_pair" if prefix == "search" else "chosen"]
    size = record.get(f"{prefix}_min_size")
    return (float(pair[0]), float(pair[1]), bool(record.get(f"{prefix}_thin", False)),
            _radius(post, record.get(f"{prefix}_closing_radius")),
            int(post.min_size if size is None else size), int(record.get(f"{prefix}_plug_size") or 0))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Which model's validation maps a threshold sweep chooses on, and where it records."""

    label: str  # in messages: "U-Net", "auto-context", "imported model"
    model: str  # the POSTPROCESS_SCORE metric's ``model`` field
    metric: MetricName  # one mean per candidate
    record: str  # ``dest/<record>``: every choice's mean (a resumed run reuses it)
    cache: str  # ``dest/<cache>``: the dust / plug choice's scores
    vary: bool  # also vary ``thin`` and the closing radius (else the search's are kept)


#: The U-Net's sweep: pairs x thinning x closing radii (its maps are another model's).
UNET_SWEEP = Sweep("U-Net", "unet", MetricName.UNET_THRESHOLD_SCORE, UNET_THRESHOLDS, UNET_POSTPROCESS, True)
#: The auto-context rounds' sweep: their maps are sharper than the base model's the search chose on,
#: so the pair moves (measured: 0.40/0.55 -> 0.50/0.65); the search's thinning and radius are kept.
CONTEXT_SWEEP = Sweep("auto-context", "context", MetricName.CONTEXT_THRESHOLD_SCORE, CONTEXT_THRESHOLDS,
                      CONTEXT_POSTPROCESS, False)
#: An imported nnU-Net's sweep (a run with ``--model``): pairs x thinning x closing radii, from the
#: bundle's post-processing (by default 0.5 / 0.5, nnU-Net's argmax); its maps are no model's of this run.
MODEL_SWEEP = Sweep("imported model", "nnunet", MetricName.MODEL_THRESHOLD_SCORE, MODEL_THRESHOLDS,
                    MODEL_POSTPROCESS, True)


def sweep_keys(cfg, sweep: Sweep, current: PostKey) -> list[PostKey]:
    """The candidates ``sweep`` scores per volume besides ``current``: each
    hysteresis pair of :data:`UNET_THRESHOLD_GRID`, with ``sweep.vary`` also
    with and without thinning and at each closing radius, at ``current``'s
    dust and plug sizes."""
    thins, radii = ((False, True), cfg.closing_radii()) if sweep.vary else ((current[2],), [current[3]])
    keys = [(lo, hi, thin, r, *current[4:]) for lo, hi in threshold_pairs(UNET_THRESHOLD_GRID, cfg.hysteresis_gap)
            for thin in thins for r in radii]
    return [k for k in keys if not _same_key(k, current)]


def sweep_count(cfg, sweep: Sweep, best: dict[str, Any], defaults: PostDefaults | None = None) -> int:
    """How many candidates ``sweep`` scores per volume from ``best``'s choice (:func:`sweep_keys`)."""
    return len(sweep_keys(cfg, sweep, _post_key(defaults or PostDefaults.of_config(cfg), best)))


def sweep_thresholds(
    ctx: RunContext, report: Reporter, best: dict[str, Any], val: Sequence[VolumeRecord], dest: Path,
    scores: dict[str, dict[str, float]], *, deadline: float | None, sweep: Sweep = UNET_SWEEP,
    defaults: PostDefaults | None = None,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, float]]]:
    """The U-Net's (or, with ``sweep`` :data:`CONTEXT_SWEEP`, the
    auto-context model's: the pairs alone; with :data:`MODEL_SWEEP`, an
    imported nnU-Net's) hysteresis pair, ``thin``, closing radius, dust size and
    hole plug size, chosen by the mean competition score on the validation
    maps ``dest/<id>_prob.tif`` that :func:`validate` wrote with the U-Net
    (at most ``search_max_val_volumes`` of them): first the pairs of
    :data:`UNET_THRESHOLD_GRID`, each with and without thin-surface
    extraction and with each radius of the run's ``closing_radii()`` (at
    ``best``'s dust and plug sizes); then, for the best of those, the dust
    size and the plug size from ``best``'s and ``dust_sizes()`` /
    ``plug_sizes()`` (:func:`nx47_pipeline.model.search.choose_postprocess`,
    as the search chose its own; ties keep ``best``'s).  ``scores`` holds
    those of ``best``'s choice.

    Returns ``(choice, scores)``: ``choice`` is ``{"low", "high", "thin",
    "closing_radius", "min_size", "plug_size", "score"}`` when another
    choice than ``best``'s scores higher (the volumes' masks and
    ``<id>.json`` are rewritten with it and ``scores`` updated), else None
    and ``scores`` unchanged.  Stops with what it has at ``deadline``.
    ``dest/<sweep.record>`` (``unet_thresholds.json`` ...) records every
    choice's mean (``chosen_min_size`` / ``chosen_plug_size`` and the dust
    / plug candidates' means in ``postprocess_scores``).  ``defaults``: the
    run's post-processing defaults, for what ``best`` names not (default:
    the config's, a training run's; a run with ``--model``: its bundle's)."""
    cfg = ctx.config
    defaults = _defaults(ctx, defaults)
    current = _post_key(defaults, best)
    record = read_json(dest / sweep.record)
    if (record and len(record.get("search_pair", ())) == 2 and len(record.get("chosen", ())) == 2
            and _same_key(_recorded_key(defaults, record, "search"), current)):
        # a resumed run: the masks and scores already follow the recorded choice
        chosen = _recorded_key(defaults, record, "chosen")
        if _same_key(chosen, current):
            return None, scores
        mean = record.get("chosen_score")
        if mean is None:  # records from before the dust / plug choice
            mean = next((r["score"] for r in record.get("scores", [])
                         if _same_key((r["low"], r["high"], r.get("thin", False),
                                       _radius(defaults, r.get("closing_radius")), chosen[4], chosen[5]), chosen)),
                        None)
        return _choice(chosen, mean), scores
    recs = [r for r in search_volumes(cfg, val) if r.id in scores and (dest / f"{r.id}_prob.tif").exists()]
    keys = sweep_keys(cfg, sweep, current)
    results: dict[PostKey, dict[str, VolumeScore]] = {k: {} for k in keys}
    done: list[str] = []
    n_val = max(len(val), 1)
    for i, rec in enumerate(recs):
        if deadline is not None and time.monotonic() >= deadline:
            report.deadline_hit("validate", f"{sweep.label} thresholds scored on {i} of {len(recs)} volumes")
            break
        pair_maps = _val_map(report, rec, dest, sweep)
        if pair_maps is None:
            continue
        prob, label = pair_maps
        ridge = surface_ridge(prob, prob > min(k[0] for k in keys)) if keys else None
        for j, key in enumerate(keys):
            def on_score(d, t, what, _j=j, _i=i, _id=rec.id):
                # a large volume takes seconds to score: say so per part
                report.progress(n_val, n_val, file=_id, file_done=_i, file_total=len(recs),
                                substep=f"{sweep.label} thresholds: {what}", substep_done=_j,
                                substep_total=len(keys))

            results[key][rec.id] = score_volume(_post_mask(prob, key, ridge), label, on_progress=on_score)
            report.progress(n_val, n_val, file=rec.id, file_done=i, file_total=len(recs),
                            substep=f"{sweep.label} thresholds", substep_done=j + 1, substep_total=len(keys))
        done.append(rec.id)
    if not done:
        return None, scores
    table = {current: float(np.mean([scores[i]["score"] for i in done]))}
    table.update({key: float(np.mean([s.score for s in by_id.values()])) for key, by_id in results.items()})
    for (low, high, thin, r, size, plug), mean in sorted(table.items(), key=lambda kv: (kv[0][2], kv[0][3],
                                                                                        kv[0][1])):
        report.metric(sweep.metric, mean, low=low, high=high, thin=thin, closing_radius=list(r),
                      min_size=size, plug_size=plug, n_volumes=len(done))
    # ties: the search's choice, then no thinning, then the earlier radius of closing_radii()
    order = {r: i for i, r in enumerate(cfg.closing_radii())}
    chosen = max(table, key=lambda k: (table[k], k == current, not k[2], -order.get(k[3], len(order))))
    chosen_mean = table[chosen]
    # the dust size and hole plug size of that choice, as the search chose its own
    by_rec = {r.id: r for r in recs}

    def load(i, on_p):
        return _val_map(report, by_rec[done[i]], dest, sweep)

    known = ({v: scores[v]["score"] for v in done} if chosen == current
             else {v: results[chosen][v].score for v in done})
    # the search's sizes first: ties keep them
    post = choose_postprocess(
        done, load, low=chosen[0], high=chosen[1], thin=chosen[2], closing_radius=chosen[3],
        dust_sizes=[chosen[4], *cfg.dust_sizes()], plug_sizes=[chosen[5], *cfg.plug_sizes()],
        min_size=chosen[4], plug_size=chosen[5],
        known={(chosen[4], chosen[5]): known}, cache=dest / sweep.cache, deadline=deadline,
        on_progress=lambda d, t, what: report.progress(n_val, n_val, substep=f"{sweep.label} dust / plug: {what}",
                                                       substep_done=int(d), substep_total=int(t)),
        on_metric=lambda value, extra: report.metric(MetricName.POSTPROCESS_SCORE, value, model=sweep.model,
                                                     **extra),
        on_deadline=lambda what: report.deadline_hit("validate", f"{sweep.label} {what}"))
    if post["score"] is not None:
        chosen = (*chosen[:4], int(post["min_size"]), int(post["plug_size"]))
        chosen_mean = float(post["score"])
    if _same_key(chosen, current):
        chosen = current
    record = {"volumes": done, "chosen": list(chosen[:2]), "chosen_thin": chosen[2],
              "chosen_closing_radius": list(chosen[3]), "chosen_min_size": chosen[4],
              "chosen_plug_size": chosen[5], "chosen_score": chosen_mean,
              "search_pair": list(current[:2]), "search_thin": current[2],
              "search_closing_radius": list(current[3]), "search_min_size": current[4],
              "search_plug_size": current[5],
              "scores": [{"low": lo, "high": hi, "thin": thin, "closing_radius": list(r), "min_size": size,
                          "plug_size": plug, "score": v}
                         for (lo, hi, thin, r, size, plug), v in sorted(table.items())],
              "postprocess_scores": post["scores"]}
    new = dict(scores)
    if chosen != current:
        # every validation volume the U-Net segmented gets the chosen masks and scores
        for rec in val:
            if rec.id not in new or not (dest / f"{rec.id}_prob.tif").exists():
                continue
            if rec.id not in done and deadline is not None and time.monotonic() >= deadline:
                break
            pair_maps = _val_map(report, rec, dest, sweep)
            if pair_maps is None:
                continue
            mask = _post_mask(pair_maps[0], chosen, None)
            # the sweep scored the done volumes at the sweep's sizes
            s = (results[chosen].get(rec.id) if chosen in results else None) or score_volume(mask, pair_maps[1])
            write_volume(dest / f"{rec.id}.tif", mask)
            new[rec.id] = validation_record(s)
            write_json(dest / f"{rec.id}.json", new[rec.id])
    write_json(dest / sweep.record, record)  # last: a resumed run trusts the masks it names
    if chosen == current:
        return None, scores
    return _choice(chosen, chosen_mean), new


#: The keys of a sweep's choice that go into a run's ``best`` (the segment stage's post-processing).
CHOICE_KEYS = ("low", "high", "thin", "closing_radius", "min_size", "plug_size")


def _choice(key: PostKey, score: float | None) -> dict[str, Any]:
    return {"low": key[0], "high": key[1], "thin": key[2], "closing_radius": list(key[3]), "min_size": key[4],
            "plug_size": key[5], "score": score}


def _val_map(report: Reporter, rec: VolumeRecord, dest: Path,
             sweep: Sweep = UNET_SWEEP) -> tuple[np.ndarray, np.ndarray] | None:
    """The validation probabilities of ``rec`` (``dest/<id>_prob.tif``)
    and its label; None with a WARNING naming the file when one is unreadable."""
    try:
        prob = uint8_to_probability(read_volume(dest / f"{rec.id}_prob.tif", kind="image"))
        _, label = read_pair(rec.image_path, rec.label_path)
    except VolumeError as exc:
        report.warn(f"{sweep.label} thresholds: {exc}", subject=rec.id, code="unet_threshold_skipped")
        return None
    return prob, label


def _post_mask(prob: np.ndarray, key: PostKey, ridge: np.ndarray | None) -> np.ndarray:
    """The mask of ``prob`` post-processed with ``key``; ``ridge`` (the
    :func:`surface_ridge` of ``prob`` on every voxel above ``key``'s low, or
    None) saves recomputing it for each pair."""
    low, high, thin, radius, min_size, plug_size = key
    return PostChoice(low=low, high=high, thin=thin, closing_radius=tuple(radius), min_size=min_size,
                      plug_size=plug_size).apply(prob, ridge=ridge)


def segment(
    ctx: RunContext, report: Reporter, model: LogisticModel | None, best: dict[str, Any],
    unet_part: UNetPart | None, test: Sequence[VolumeRecord], dest: Path, *, deadline: float | None,
    executor: Any = None, timings: PreflightTimings | None = None, unet_cost: UNetCost | None = None,
    post: PostDefaults | None = None,
) -> list[str]:
    """A mask for every test volume in ``dest``: the model's while the time
    left covers it and the fallback of every volume after it
    (:func:`nx47_pipeline.run.budget.model_segment_need_s`), else the
    fallback.  One :func:`~nx47_pipeline.run.tasks.segment_task` per volume on
    ``executor`` (default in process: each volume is decided when its turn
    comes; on threads or Dask all are decided at submission, counting the
    model time of the volumes ahead: shared by the Dask workers, at the
    preflight's rate on threads).  ``timings`` (the preflight's rates, None
    before it) and ``unet_cost`` (the cost model of ``unet_part``) size
    that decision; ``post``: the post-processing's defaults, the fallback's
    included (default: the config's).  Returns the ids that got the
    fallback, in the order of ``test``."""
    cfg = ctx.config
    post = _defaults(ctx, post)
    executor = executor if executor is not None else InProcess()
    dest.mkdir(parents=True, exist_ok=True)
    n = len(test)
    cost = unet_cost if unet_part is not None else None
    seg = segmenter(ctx, model, best, unet_part, post) if model is not None else None
    thin = bool(best.get("thin", False))
    plug = plug_size_of(best) > 0
    state = {"announced": False, "ahead_s": 0.0, "done": 0}

    for rec in test:
        if (dest / f"{rec.id}.tif").exists():
            state["done"] += 1
            report.progress(state["done"], n, file=rec.id, file_done=state["done"], file_total=n, message="cached")
            report.preview(preview_payload(ctx, rec, Split.TEST, dest))

    def jobs():
        for i, rec in enumerate(test):
            if (dest / f"{rec.id}.tif").exists():
                continue
            use_model = seg is not None
            if use_model and deadline is not None:
                m = mvox(rec.shape)
                # volumes ahead: shared out to Dask workers; on threads the preflight's
                # rate already is the throughput of the tasks at once
                left = deadline - time.monotonic() - state["ahead_s"] / budget.parallel_workers(cfg)
                need = budget.model_segment_need_s(
                    timings, mvox=m, rest_mvox=[mvox(r.shape) for r in test[i + 1:]], unet=cost, thin=thin,
                    plug=plug,
                )
                if left < need:
                    use_model = False
                    if not state["announced"]:
                        state["announced"] = True
                        report.budget(
                            BudgetDecision.FALLBACK,
                            f"segment: {left:.0f} s left, model segmentation of {n - i} volumes does not fit; "
                            "the remaining volumes get the fallback segmentation",
                            budget_s=cfg.budget_s,
                        )
                elif not executor.lazy:
                    state["ahead_s"] += budget.model_segment_need_s(timings, mvox=m, rest_mvox=[], unet=cost,
                                                                    thin=thin, plug=plug)
            yield SegmentJob(index=i, volume_id=rec.id, image_path=rec.image_path, dest=dest,
                             segmenter=seg if use_model else None, closing_radius=post.closing_radius,
                             min_size=post.min_size, trace=cfg.array_trace, shape=rec.shape)

    def on_progress(index: int, done: int, total: int, what: str, frac: float, worker: str) -> None:
        report.progress(state["done"] + frac, n, file=test[index].id, file_done=state["done"], file_total=n,
                        substep=what, substep_done=done, substep_total=total, worker=worker)

    fallback: set[int] = set()
    for _, res in executor.map(segment_task, jobs(), on_progress=on_progress, check=ctx.cancel.raise_if_cancelled,
                               on_lost=_lost_worker(report, "segment")):
        rec = test[res.index]
        _report_outcome(report, res)
        state["done"] += 1
        if res.data.get("fallback"):
            fallback.add(res.index)
        if res.shape is not None:
            report.preview(preview_payload(ctx, rec, Split.TEST, dest, shape=res.shape))
        report.progress(state["done"], n, file=rec.id, file_done=state["done"], file_total=n, worker=res.worker)
    return [test[i].id for i in sorted(fallback)]


# ---------------------------------------------------------------------------
# package
# ---------------------------------------------------------------------------
def package(
    ctx: RunContext, report: Reporter, test: Sequence[VolumeRecord], masks: Path, dest: Path,
) -> Path | None:
    """``dest`` (``submission.zip``) from the masks in ``masks``; a missing
    mask is reported by id and left out."""
    entries = [(r.id, masks / f"{r.id}.tif") for r in test]
    present = [(i, p) for i, p in entries if p.exists()]
    for i, p in entries:
        if not p.exists():
            report.err(f"{p}: no mask for test id {i}; it is missing from the submission", subject=i,
                       code="missing_mask")
    try:
        return write_submission(
            present, dest,
            on_progress=lambda d, t, what: report.progress(d, t, file=what, file_done=d, file_total=t),
        )
    except PackagingError as exc:
        report.err(str(exc), subject=dest.name, code="package_failed")
        return None


__all__ = [
    "RunFailed",
    "ProgressFn",
    "discovery",
    "coverage_audit",
    "features",
    "load_samples",
    "search",
    "fit",
    "unet",
    "validate",
    "segment",
    "package",
    "segmenter",
    "mvox",
    "suggest_slices",
    "volume_seed",
]
