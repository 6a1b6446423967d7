"""Per-volume work of the run, as plain functions that can run anywhere.

Each task takes a job (a small frozen dataclass of paths and parameters) and
a ``progress`` callable, does one volume's work, writes that volume's
artifacts atomically in the run folder and returns a :class:`Outcome`.  A
task never touches telemetry: the warnings, errors and array traces it
produces travel back in the outcome and the driver (the stage functions of
:mod:`nx47_pipeline.run.stages`) reports them, so the journal keeps a single
writer whether the task ran in this process or on a Dask worker.

``progress(index, done, total, what, frac)`` reports the job's sub-steps
(``index`` is the job's position in its stage, ``frac`` in [0, 1] the part
of this volume done); in process it reaches the stage's reporter directly,
on Dask it travels as a worker event (:func:`nx47_pipeline.run.executor.remote_progress`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nx47_pipeline.io.atomic import atomic_path
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.volumes import VolumeError, read_header, read_pair, read_volume, write_volume
from nx47_pipeline.model.features import volume_sample
from nx47_pipeline.model.metric import VolumeScore, score_volume
from nx47_pipeline.model.postprocess import fallback_segment, probability_to_uint8
from nx47_pipeline.model.predictor import PostChoice, Predictor
from nx47_pipeline.telemetry.events import ArrayTracePayload, Severity
from nx47_pipeline.telemetry.trace import array_trace

#: ``progress(index, done, total, what, frac)``
TaskProgress = Callable[[int, int, int, str, float], None]


def no_progress(index: int, done: int, total: int, what: str, frac: float) -> None:
    """A ``progress`` that reports nothing."""


@dataclass(frozen=True)
class Note:
    """A WARNING or ERROR a task wants reported (``level``: :class:`~nx47_pipeline.telemetry.events.Severity`)."""

    level: Severity
    message: str
    subject: str = ""
    code: str = ""


@dataclass
class Outcome:
    """What one task did: ``ok`` False when the volume was left out."""

    index: int
    volume_id: str
    ok: bool = True
    notes: list[Note] = field(default_factory=list)
    traces: list[ArrayTracePayload] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    worker: str = ""  # set by the executor: the Dask worker's name ("" in process)


def _trace(out: Outcome, name: str, array: np.ndarray) -> None:
    try:
        out.traces.append(array_trace(name, array))
    except Exception as exc:  # noqa: BLE001 - a trace never fails the volume
        out.notes.append(Note(Severity.WARNING, f"array trace of {name} failed: {type(exc).__name__}: {exc}",
                              subject=name, code="trace_failed"))


def _read_pair(job, out: Outcome):
    """``(image, label)`` of a job's pair; None, with the error in ``out``, when unreadable."""
    try:
        image, label = read_pair(job.image_path, job.label_path)
    except VolumeError as exc:
        out.ok = False
        out.notes.append(Note(Severity.ERROR, str(exc), subject=job.volume_id, code=exc.code))
        return None
    out.shape = tuple(int(s) for s in image.shape)
    return image, label


# ---------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureJob:
    index: int
    volume_id: str
    image_path: Path
    label_path: Path
    dest: Path  # <id>.npz
    scales: tuple[float, ...]
    per_class: int
    seed: int
    max_slabs: int | None
    trace: bool = False


def features_task(job: FeatureJob, progress: TaskProgress = no_progress) -> Outcome:
    """Class-balanced voxel sample of one training pair into ``job.dest``
    (``X``, ``y`` and the labelled voxels' class ``counts``)."""
    out = Outcome(job.index, job.volume_id)
    progress(job.index, 0, 1, "read", 0.0)
    pair = _read_pair(job, out)
    if pair is None:
        return out
    image, label = pair
    if job.trace:
        _trace(out, f"train/{job.volume_id}/image", image)
        _trace(out, f"train/{job.volume_id}/label", label)
    has_fg, has_bg = bool(np.any(label == 1)), bool(np.any(label == 0))
    if not has_fg or not has_bg:
        out.ok = False
        out.notes.append(Note(
            Severity.WARNING,
            f"{job.label_path}: label has no {'surface (1)' if not has_fg else 'background (0)'} "
            "voxels outside the ignore label; volume skipped for training",
            subject=job.volume_id, code="label_unusable"))
        return out

    def on_feat(done: int, total: int, what: str) -> None:
        progress(job.index, done, total, what, done / max(total, 1))

    X, y = volume_sample(image, label, scales=job.scales, n_per_class=job.per_class, seed=job.seed,
                         max_slabs=job.max_slabs, on_progress=on_feat)
    # labelled-voxel class counts: the sample is class-balanced, the
    # volumes are not; the model's intercept is corrected with them
    counts = np.array([np.count_nonzero(label == 0), np.count_nonzero(label == 1)], dtype=np.int64)
    with atomic_path(job.dest) as tmp:
        np.savez(tmp, X=X, y=y, counts=counts)
    return out


# ---------------------------------------------------------------------------
# validate and segment
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Segmenter:
    """The model (a :class:`~nx47_pipeline.model.predictor.Predictor`) and the
    post-processing (:class:`~nx47_pipeline.model.predictor.PostChoice`) a
    validate or segment task applies."""

    predictor: Predictor
    post: PostChoice


def model_mask(seg: Segmenter, image: np.ndarray, on_p, prob_path: Path) -> np.ndarray:
    """Probability map (kept as uint8 at ``prob_path``) -> post-processed
    uint8 0/1 mask with the chosen thresholds, ``thin``, closing radius,
    dust size and hole plug size."""
    prob = seg.predictor.predict(image, on_progress=lambda d, t, what, f: on_p(d, t, what, 0.8 * f))

    def on_post(done: int, total: int, step: str) -> None:
        on_p(done, total, f"post-processing: {step}", 0.8 + 0.2 * done / max(total, 1))

    mask = seg.post.apply(prob, on_progress=on_post)
    on_p(1, 1, "writing the probability map", 1.0)
    write_volume(prob_path, probability_to_uint8(prob))
    return mask


def validation_record(s: VolumeScore) -> dict[str, Any]:
    """What ``val/<id>.json`` and the run's validation scores hold for one volume:
    the score, its parts, and TopoScore's counts per dimension (matched /
    predicted / labelled, F1) with the ``topo_method`` that made them."""
    d = s.to_dict()
    return {k: d[k] for k in ("score", "surface_dice", "voi", "topo", "topo_matched",
                              "betti_pred", "betti_gt", "topo_f1", "topo_method")}


@dataclass(frozen=True)
class ValidateJob:
    index: int
    volume_id: str
    image_path: Path
    label_path: Path
    dest: Path  # folder: <id>.tif, <id>_prob.tif, <id>.json
    segmenter: Segmenter


def validate_task(job: ValidateJob, progress: TaskProgress = no_progress) -> Outcome:
    """Segment and score one validation pair; ``data`` holds the scores."""
    out = Outcome(job.index, job.volume_id)
    pair = _read_pair(job, out)
    if pair is None:
        return out
    image, label = pair

    def on_p(done, total, what, frac):
        progress(job.index, done, total, what, 0.8 * frac)

    mask = model_mask(job.segmenter, image, on_p, job.dest / f"{job.volume_id}_prob.tif")
    write_volume(job.dest / f"{job.volume_id}.tif", mask)
    progress(job.index, 0, 1, "score", 0.8)
    s = score_volume(mask, label, on_progress=lambda done, total, what: progress(
        job.index, done, total, f"score: {what}", 0.8 + 0.2 * done / total))
    out.data = validation_record(s)
    write_json(job.dest / f"{job.volume_id}.json", out.data)
    return out


@dataclass(frozen=True)
class SegmentJob:
    index: int
    volume_id: str
    image_path: Path
    dest: Path  # folder: <id>.tif (and <id>_prob.tif with the model)
    segmenter: Segmenter | None  # None: the fallback segmentation
    closing_radius: tuple[int, int, int]
    min_size: int
    trace: bool = True
    shape: tuple[int, ...] | None = None  # from discovery: the empty mask's shape when the image is unreadable


def segment_task(job: SegmentJob, progress: TaskProgress = no_progress) -> Outcome:
    """The mask of one test volume: the model's, or the fallback's when
    ``job.segmenter`` is None.  An unreadable image gets an empty mask of its
    shape (discovery's, else its header's) when known (``data['empty']``)."""
    out = Outcome(job.index, job.volume_id)
    mask_path = job.dest / f"{job.volume_id}.tif"
    try:
        image = read_volume(job.image_path, kind="image")
    except VolumeError as exc:
        out.ok = False
        out.notes.append(Note(Severity.ERROR, str(exc), subject=job.volume_id, code=exc.code))
        shape = job.shape
        if shape is None:
            try:
                shape = read_header(job.image_path).shape
            except VolumeError:
                return out
        write_volume(mask_path, np.zeros(shape, dtype=np.uint8))
        out.shape = tuple(int(s) for s in shape)
        out.data["empty"] = True
        out.notes.append(Note(Severity.WARNING, f"{job.image_path}: unreadable test image, submitted an empty mask of "
                                      f"shape {tuple(shape)}", subject=job.volume_id, code="empty_mask"))
        return out
    out.shape = tuple(int(s) for s in image.shape)
    if job.segmenter is not None:
        def on_p(done, total, what, frac):
            progress(job.index, done, total, what, 0.9 * frac)

        mask = model_mask(job.segmenter, image, on_p, job.dest / f"{job.volume_id}_prob.tif")
    else:
        progress(job.index, 0, 1, "fallback segmentation", 0.0)
        mask = fallback_segment(image, closing_radius=job.closing_radius, min_size=job.min_size,
                                on_progress=lambda d, t, what: progress(job.index, d, t, f"fallback: {what}",
                                                                        0.9 * d / max(t, 1)))
        out.data["fallback"] = True
    if mask.shape != image.shape or mask.dtype != np.uint8:
        raise RuntimeError(f"{job.image_path}: mask shape/dtype {mask.shape}/{mask.dtype} != source "
                           f"{image.shape}/uint8")
    write_volume(mask_path, mask)
    if job.trace:
        _trace(out, f"test/{job.volume_id}/mask", mask)
    return out


__all__ = ["Note", "Outcome", "TaskProgress", "no_progress", "FeatureJob", "features_task", "Segmenter", "validation_record",
           "model_mask", "ValidateJob", "validate_task", "SegmentJob", "segment_task"]
