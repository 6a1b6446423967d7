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

import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nx47_pipeline.data.coverage import Selection, select_coverage
from nx47_pipeline.data.discovery import Inventory, VolumeRecord, discover, resolve_data_root
from nx47_pipeline.io.atomic import atomic_path
from nx47_pipeline.io.jsonio import read_json, write_json
from nx47_pipeline.io.submission import PackagingError, write_submission
from nx47_pipeline.io.volumes import VolumeError, read_header, read_pair, read_volume, write_volume
from nx47_pipeline.model.features import feature_names, volume_sample
from nx47_pipeline.model.linear import LogisticModel, fit_prox, prior_shift
from nx47_pipeline.model.metric import score_volume
from nx47_pipeline.model.postprocess import fallback_segment, postprocess, probability_to_uint8
from nx47_pipeline.model.predict import UNetPart, probability
from nx47_pipeline.model.search import run_search
from nx47_pipeline.run import budget
from nx47_pipeline.run.context import ProgressFn, Reporter, RunContext, Samples
from nx47_pipeline.telemetry.events import (
    BudgetDecision,
    CoverageAuditPayload,
    MetricName,
    PreviewPayload,
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
        if issue.level == "error":
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
def features(
    ctx: RunContext,
    report: Reporter,
    records: Sequence[VolumeRecord],
    dest: Path,
    *,
    deadline: float | None = None,
    n_records: int | None = None,
    offset: int = 0,
) -> list[Path]:
    """Class-balanced voxel samples of ``records``, one ``<id>.npz`` each
    (``X``, ``y`` and the labelled voxels' class ``counts``).

    Unreadable pairs and labels without both classes are reported by name
    and left out.  ``n_records``/``offset`` place these records in a larger
    loop for progress and for the per-volume sample size.
    """
    cfg = ctx.config
    dest.mkdir(parents=True, exist_ok=True)
    n = n_records if n_records is not None else len(records)
    per_class = max(1, min(cfg.samples_per_class, cfg.max_total_samples // max(2 * n, 1)))
    out: list[Path] = []
    for j, rec in enumerate(records):
        i = offset + j
        path = dest / f"{rec.id}.npz"
        if path.exists():
            out.append(path)
            report.progress(i + 1, n, file=rec.id, file_done=i + 1, file_total=n, message="cached")
            continue
        if deadline is not None and time.monotonic() > deadline:
            report.deadline_hit("features", f"{len(records) - j} training volumes left out")
            break
        report.progress(i, n, file=rec.id, file_done=i, file_total=n, substep="read")
        try:
            image, label = read_pair(rec.image_path, rec.label_path)
        except VolumeError as exc:
            report.err(str(exc), subject=rec.id, code=exc.code)
            continue
        if i == 0:
            report.trace(f"train/{rec.id}/image", image)
            report.trace(f"train/{rec.id}/label", label)
        has_fg, has_bg = bool(np.any(label == 1)), bool(np.any(label == 0))
        if not has_fg or not has_bg:
            report.warn(
                f"{rec.label_path}: label has no {'surface (1)' if not has_fg else 'background (0)'} "
                "voxels outside the ignore label; volume skipped for training",
                subject=rec.id,
                code="label_unusable",
            )
            continue

        def on_feat(done: int, total: int, what: str, _i=i, _id=rec.id) -> None:
            report.progress(_i + done / max(total, 1), n, file=_id, file_done=_i, file_total=n,
                            substep=what, substep_done=done, substep_total=total)

        X, y = volume_sample(
            image, label, scales=cfg.feature_scales, n_per_class=per_class,
            seed=volume_seed(cfg.seed, rec.id), max_slabs=cfg.sample_slabs or None, on_progress=on_feat,
        )
        # labelled-voxel class counts: the sample is class-balanced, the
        # volumes are not; the model's intercept is corrected with them
        counts = np.array([np.count_nonzero(label == 0), np.count_nonzero(label == 1)], dtype=np.int64)
        with atomic_path(path) as tmp:
            np.savez(tmp, X=X, y=y, counts=counts)
        out.append(path)
        report.preview(PreviewPayload(
            volume_id=rec.id, split=Split.TRAIN, shape=list(image.shape),
            image_path=str(rec.image_path), label_path=str(rec.label_path),
            slices=suggest_slices(image.shape, cfg.preview_slices),
        ))
        report.progress(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)
    return out


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
    """The (L1, L2) x threshold grid search scored with the competition
    metric on the first ``search_max_val_volumes`` of ``val``
    (:func:`nx47_pipeline.model.search.run_search`)."""
    cfg = ctx.config
    return run_search(
        samples.X, samples.y, search_volumes(cfg, val),
        dest=dest,
        l1_grid=cfg.l1_grid, l2_grid=cfg.l2_grid,
        thresholds=cfg.threshold_grid, gap=cfg.hysteresis_gap,
        scales=cfg.feature_scales,
        closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels,
        max_iter=max_iter, tol=cfg.fit_tol,
        intercept_shift=samples.prior_shift,
        top_k=cfg.search_top_k,
        deadline=deadline,
        progress=report.progress,
        on_metric=lambda name, value, extra: report.metric(MetricName(name), value, **extra),
        on_warning=lambda msg, subject, code: report.warn(msg, subject=subject, code=code),
        on_deadline=lambda what: report.deadline_hit("search", what),
    )


def search_volumes(cfg, val: Sequence[VolumeRecord]) -> list[VolumeRecord]:
    """The validation volumes the search scores its grid on (a bounded subset:
    its cost grows with volumes x grid points; validation scores every one)."""
    k = cfg.search_max_val_volumes
    return list(val[:k] if k else val)


def fit(
    ctx: RunContext, report: Reporter, samples: Samples, best: dict[str, Any], dest: Path,
    *, max_iter: int, deadline: float | None,
) -> LogisticModel:
    """``fit_prox`` at the search's best (L1, L2), warm-started from the
    search's model; ``dest/model.npz`` and ``dest/fit.json``."""
    cfg = ctx.config
    path = dest / "model.npz"
    if path.exists():
        report.progress(max_iter, max_iter, message="model cached")
        return LogisticModel.load(path)
    warm = None
    if best.get("model_path") and Path(best["model_path"]).exists():
        warm = LogisticModel.load(best["model_path"])
    last_emit = [0.0]

    def on_iter(i: int, n: int, objective: float) -> None:
        report.progress(i, n, substep="iteration", substep_done=i, substep_total=n,
                        message=f"objective {objective:.6g}")
        now = time.monotonic()
        if i <= 1 or i == n or now - last_emit[0] >= cfg.progress_interval_s:
            last_emit[0] = now
            report.metric(MetricName.FIT_PROX_OBJECTIVE, float(objective), step=int(i))

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
    write_json(dest / "fit.json", {
        "n_iter": res.n_iter, "converged": res.converged, "stopped_reason": res.stopped_reason,
        "objective": res.objective[-1] if res.objective else None, "seconds": res.seconds,
        "l1": best["l1"], "l2": best["l2"],
    })
    return res.model


# ---------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------
def unet_params(ctx: RunContext) -> UNetParams:
    return params_from_config(ctx.config)


def unet(ctx: RunContext, report: Reporter, train: Sequence[VolumeRecord], dest: Path) -> UNetPart | None:
    """Train the U-Net on patches of ``train`` with checkpoints in ``dest``;
    None when it completed no epoch."""
    cfg = ctx.config
    params = unet_params(ctx)
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
    )

    def on_batch(epoch, epochs, batch, n_batches, loss):  # epoch counts from 1
        report.progress(epoch + batch / max(n_batches, 1), steps, substep=f"epoch {epoch}/{epochs} batch",
                        substep_done=batch, substep_total=n_batches)
        report.metric(MetricName.UNET_BATCH_LOSS, float(loss), step=int((epoch - 1) * n_batches + batch))

    def on_epoch(epoch, epochs, train_loss, val_loss):
        report.metric(MetricName.UNET_EPOCH_LOSS, float(train_loss), step=int(epoch), val_loss=val_loss)

    res = train_unet(
        patches, val=None, params=params, device=cfg.unet_device, checkpoint_dir=dest,
        resume=True, deadline=ctx.deadlines.training, on_batch=on_batch, on_epoch=on_epoch,
    )
    if res.stopped_reason == "deadline":
        report.deadline_hit("unet", f"training stopped after {res.epochs_done} epochs")
    if res.epochs_done == 0:
        report.warn("the U-Net completed no epoch; segmentation uses the fit_prox model alone",
                    code="unet_untrained")
        return None
    return UNetPart(net=res.model, params=params, device=cfg.unet_device, fuse=cfg.unet_fuse)


# ---------------------------------------------------------------------------
# validate and segment
# ---------------------------------------------------------------------------
def model_mask(
    ctx: RunContext, model: LogisticModel, best: dict[str, Any], unet_part: UNetPart | None,
    image: np.ndarray, on_p, prob_path: Path,
) -> np.ndarray:
    """Probability map (kept as uint8 at ``prob_path``) -> post-processed
    uint8 0/1 mask with the search's thresholds."""
    cfg = ctx.config
    prob = probability(image, model, unet=unet_part, on_progress=on_p)
    on_p(1, 1, "post-processing", 1.0)
    mask = postprocess(prob, low=best["low"], high=best["high"],
                       closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels)
    write_volume(prob_path, probability_to_uint8(prob))
    return mask


def validate(
    ctx: RunContext, report: Reporter, model: LogisticModel, best: dict[str, Any], unet_part: UNetPart | None,
    val: Sequence[VolumeRecord], dest: Path, *, deadline: float | None,
) -> dict[str, dict[str, float]]:
    """Segment and score each validation volume (``dest/<id>.tif`` and
    ``<id>.json``); returns the scores by id."""
    n = len(val)
    scores: dict[str, dict[str, float]] = {}
    for i, rec in enumerate(val):
        mask_path = dest / f"{rec.id}.tif"
        score_path = dest / f"{rec.id}.json"
        cached = read_json(score_path) if mask_path.exists() else None
        if cached is None:
            if deadline is not None and time.monotonic() > deadline:
                report.deadline_hit("validate", f"{n - i} validation volumes not scored")
                break
            try:
                image, label = read_pair(rec.image_path, rec.label_path)
            except VolumeError as exc:
                report.err(str(exc), subject=rec.id, code=exc.code)
                continue

            def on_p(done, total, what, frac, _i=i, _id=rec.id):
                report.progress(_i + 0.8 * frac, n, file=_id, file_done=_i, file_total=n, substep=what,
                                substep_done=done, substep_total=total)

            mask = model_mask(ctx, model, best, unet_part, image, on_p, dest / f"{rec.id}_prob.tif")
            write_volume(mask_path, mask)
            report.progress(i + 0.9, n, file=rec.id, file_done=i, file_total=n, substep="score")
            s = score_volume(mask, label)
            cached = {"score": s.score, "surface_dice": s.surface_dice, "voi": s.voi_score, "topo": s.topo}
            write_json(score_path, cached)
        scores[rec.id] = cached
        report.metric(MetricName.VAL_SCORE, float(cached["score"]), step=i, volume_id=rec.id,
                      surface_dice=cached["surface_dice"], voi=cached["voi"], topo=cached["topo"])
        report.preview(preview_payload(ctx, rec, Split.VAL, dest, score=float(cached["score"])))
        report.progress(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)
    return scores


def _empty_mask_for_unreadable(report: Reporter, rec: VolumeRecord, mask_path: Path, exc: VolumeError) -> None:
    report.err(str(exc), subject=rec.id, code=exc.code)
    shape = rec.shape
    if shape is None:
        try:
            shape = read_header(rec.image_path).shape
        except VolumeError:
            shape = None
    if shape is not None:
        write_volume(mask_path, np.zeros(shape, dtype=np.uint8))
        report.warn(f"{rec.image_path}: unreadable test image, submitted an empty mask of shape {tuple(shape)}",
                    subject=rec.id, code="empty_mask")


def segment(
    ctx: RunContext, report: Reporter, model: LogisticModel | None, best: dict[str, Any],
    unet_part: UNetPart | None, test: Sequence[VolumeRecord], dest: Path, *, deadline: float | None,
) -> list[str]:
    """A mask for every test volume in ``dest``: the model's while the time
    left covers it and the fallback of every volume after it
    (:func:`nx47_pipeline.run.budget.model_segment_need_s`), else the
    fallback.  Returns the ids that got the fallback."""
    cfg = ctx.config
    dest.mkdir(parents=True, exist_ok=True)
    n = len(test)
    timings = ctx.state.timings
    cost = ctx.state.unet_plan.cost if unet_part is not None else None
    fallback_ids: list[str] = []
    announced = False
    for i, rec in enumerate(test):
        mask_path = dest / f"{rec.id}.tif"
        if mask_path.exists():
            report.progress(i + 1, n, file=rec.id, file_done=i + 1, file_total=n, message="cached")
            report.preview(preview_payload(ctx, rec, Split.TEST, dest))
            continue
        try:
            image = read_volume(rec.image_path, kind="image")
        except VolumeError as exc:
            _empty_mask_for_unreadable(report, rec, mask_path, exc)
            continue
        use_model = model is not None
        if use_model and deadline is not None:
            left = deadline - time.monotonic()
            need = budget.model_segment_need_s(
                timings, mvox=mvox(image.shape), rest_mvox=[mvox(r.shape) for r in test[i + 1:]], unet=cost,
            )
            if left < need:
                use_model = False
                if not announced:
                    announced = True
                    report.budget(
                        BudgetDecision.FALLBACK,
                        f"segment: {left:.0f} s left, model segmentation of {n - i} volumes does not fit; "
                        "the remaining volumes get the fallback segmentation",
                        budget_s=cfg.budget_s,
                    )
        if use_model:
            def on_p(done, total, what, frac, _i=i, _id=rec.id):
                report.progress(_i + 0.9 * frac, n, file=_id, file_done=_i, file_total=n,
                                substep=what, substep_done=done, substep_total=total)

            mask = model_mask(ctx, model, best, unet_part, image, on_p, dest / f"{rec.id}_prob.tif")
        else:
            report.progress(i, n, file=rec.id, file_done=i, file_total=n, substep="fallback segmentation")
            mask = fallback_segment(image, closing_radius=cfg.closing_radius, min_size=cfg.min_component_voxels)
            fallback_ids.append(rec.id)
        if mask.shape != image.shape or mask.dtype != np.uint8:
            raise RunFailed(f"{rec.image_path}: mask shape/dtype {mask.shape}/{mask.dtype} != source {image.shape}/uint8")
        write_volume(mask_path, mask)
        report.trace(f"test/{rec.id}/mask", mask)
        report.preview(preview_payload(ctx, rec, Split.TEST, dest, shape=image.shape))
        report.progress(i + 1, n, file=rec.id, file_done=i + 1, file_total=n)
    return fallback_ids


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
    "model_mask",
    "mvox",
    "suggest_slices",
    "volume_seed",
]
