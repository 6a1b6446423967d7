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

from nx47_pipeline.data.discovery import VolumeRecord
from nx47_pipeline.io.jsonio import read_json
from nx47_pipeline.io.run_folder import FIT, RunFolder
from nx47_pipeline.io.submission import write_submission
from nx47_pipeline.io.volumes import read_volume
from nx47_pipeline.model.postprocess import fallback_segment
from nx47_pipeline.run import budget, stages
from nx47_pipeline.run.budget import PreflightTimings
from nx47_pipeline.run.context import RunContext
from nx47_pipeline.run.executor import InProcess
from nx47_pipeline.unet.backend import torch_available
from nx47_pipeline.unet.train import time_train_step

#: Phases of the preflight chain (its progress counts them).
PHASES = ("features", "search", "fit_prox", "unet", "validate", "segment")


class OutOfTime(Exception):
    """The preflight ran past the time the budget leaves it."""


@dataclass(frozen=True)
class PreflightSlice:
    """What the preflight runs on."""

    train: list[VolumeRecord]  # the first candidates; a bad one is replaced by the next selected
    candidates: list[VolumeRecord]  # every selected training pair, in order
    val: list[VolumeRecord]
    test: list[VolumeRecord]


#: Validation volumes the preflight searches and validates at most: its
#: search costs a filter bank and ``search_top_k`` metric evaluations per
#: volume, so this bounds its fixed cost at full coverage (5 % of 157
#: validation pairs would be 8 volumes, several minutes at 320^3).
PREFLIGHT_MAX_VAL = 2


def preflight_slice(ctx: RunContext) -> PreflightSlice:
    """``ceil(preflight_frac * n)`` training pairs, as many validation pairs
    (at most :data:`PREFLIGHT_MAX_VAL`), one test volume per task run at once
    on threads (so the segment rate is their throughput; one on Dask)."""
    sel, inv = ctx.state.selection, ctx.state.inventory
    frac = ctx.config.preflight_frac
    n_tr = budget.ceil_frac(len(sel.train), frac)
    n_va = min(budget.ceil_frac(len(sel.val), frac), PREFLIGHT_MAX_VAL)
    # as many test volumes as tasks run at once on threads (at most preflight_frac of them, at least 1)
    at_once = int(getattr(ctx.executor, "workers", 1) or 1) if getattr(ctx.executor, "shares_cores", False) else 1
    at_once = max(1, min(at_once, budget.ceil_frac(len(inv.test), frac)))
    return PreflightSlice(train=list(sel.train[:n_tr]), candidates=list(sel.train),
                          val=list(sel.val[:n_va]), test=list(inv.test[:at_once]))


def preflight_deadline(ctx: RunContext) -> float:
    """Monotonic time by which the preflight must end (the fallback of every
    test volume and the end margin stay)."""
    reserve = budget.preflight_reserve_s(None, test_mvox=[stages.mvox(r.shape) for r in ctx.state.inventory.test])
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
    deadline = preflight_deadline(ctx)
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
    stages.validate(ctx, quiet(4), model, grid["best"], None, sl.val, dest / "val", deadline=None,
                    executor=executor)
    t_val = time.monotonic() - t

    t = time.monotonic()
    stages.segment(ctx, quiet(5), model, grid["best"], None, sl.test, dest / "test", deadline=None,
                   executor=executor)
    t_seg = time.monotonic() - t
    mvox_test = float(np.mean([stages.mvox(r.shape) for r in sl.test]))

    t_fb, t_pack, vol_shape = _fallback_and_package(ctx, sl, dest, phase(5))
    ctx.progress(phases, phases, message="preflight chain complete")
    return PreflightTimings(
        features_s_per_mvox=t_feat / max(mvox_train * len(paths), 1e-6),
        search_s_per_mvox=max(t_search_total - fit_s, 1e-3) / max(mvox_val, 1e-6),
        fit_s_per_iter_row=fit_s / max(grid["fit_iters"] * len(samples.y), 1),
        validate_s_per_mvox=t_val / max(mvox_val, 1e-6),
        segment_s_per_mvox=t_seg / max(mvox_test * len(sl.test), 1e-6),
        fallback_s_per_mvox=t_fb / max(stages.mvox(vol_shape), 1e-6),
        package_s_per_volume=t_pack / len(sl.test),
        mvox_train=mvox_train,
        mvox_test=mvox_test,
        rows_per_volume=len(samples.y) / len(paths),
        grid_fits=len(cfg.l1_grid) * len(cfg.l2_grid),
        unet_s_per_batch=unet_s_per_batch,
        search_iters_converged=(grid["fit_iters"] / max(len(cfg.l1_grid) * len(cfg.l2_grid), 1)
                                if grid.get("fit_converged") == len(cfg.l1_grid) * len(cfg.l2_grid) else None),
        fit_iters_converged=(float(fit_info["n_iter"]) if fit_info.get("converged") else None),
        data_root=_data_root(ctx),
    )


def _fallback_and_package(ctx: RunContext, sl: PreflightSlice, dest: Path,
                          progress: Callable[..., None]) -> tuple[float, float, tuple[int, ...]]:
    """Time the fallback segmentation of the first test volume and the
    packaging of the slice's masks: ``(fallback_s, package_s, shape)``.
    ``progress(done, total, substep=...)`` is the phase they end; its
    sub-steps name theirs (the phase's counter stays where it is)."""
    progress(1, 1, substep="fallback: reading the test volume")
    vol = read_volume(sl.test[0].image_path, kind="image")
    t = time.monotonic()
    fallback_segment(vol, closing_radius=ctx.config.closing_radius, min_size=ctx.config.min_component_voxels,
                     on_progress=lambda d, t_, what: progress(1, 1, substep=f"fallback: {what}"))
    t_fb = time.monotonic() - t
    t = time.monotonic()
    write_submission([(r.id, dest / "test" / f"{r.id}.tif") for r in sl.test], RunFolder(dest).submission,
                     on_progress=lambda d, t_, what: progress(1, 1, substep=f"packaging: {what}"))
    t_pack = time.monotonic() - t
    return t_fb, t_pack, tuple(vol.shape)


def run_inference_chain(ctx: RunContext, sl: PreflightSlice, dest: Path) -> PreflightTimings:
    """The inference part of the chain on ``sl`` (a run with ``--model``):
    validation of one pair when there is one, model segmentation of one test
    volume, the fallback and the packaging, timed.  Training rates are 0."""
    st = ctx.state
    deadline = preflight_deadline(ctx)
    if time.monotonic() > deadline:
        raise OutOfTime("nothing left after reserving the fallback segmentation")
    n = 4

    def step(i: int, label: str):
        return ctx.reporter(publish=False, progress=_phase_progress(ctx, deadline, i, n, label))

    t = time.monotonic()
    val = sl.val[:1]
    stages.validate(ctx, step(0, "validate"), st.model, st.best, st.unet, val, dest / "val", deadline=None)
    t_val = time.monotonic() - t
    mvox_val = float(np.sum([stages.mvox(r.shape) for r in val]))
    t = time.monotonic()
    stages.segment(ctx, step(1, "segment"), st.model, st.best, st.unet, sl.test, dest / "test", deadline=None)
    t_seg = time.monotonic() - t
    mvox_test = float(np.mean([stages.mvox(r.shape) for r in sl.test]))
    t_fb, t_pack, vol_shape = _fallback_and_package(ctx, sl, dest, _phase_progress(ctx, deadline, 1, n,
                                                                                     "segment"))
    ctx.progress(n, n, message="inference preflight complete")
    return PreflightTimings(
        features_s_per_mvox=0.0, search_s_per_mvox=0.0, fit_s_per_iter_row=0.0,
        validate_s_per_mvox=t_val / max(mvox_val, 1e-6) if val else t_seg / max(mvox_test, 1e-6),
        segment_s_per_mvox=t_seg / max(mvox_test * len(sl.test), 1e-6),
        fallback_s_per_mvox=t_fb / max(stages.mvox(vol_shape), 1e-6),
        package_s_per_volume=t_pack / len(sl.test),
        mvox_train=float(np.mean([stages.mvox(r.shape) for r in val])) if val else mvox_test,
        mvox_test=mvox_test, rows_per_volume=0.0, grid_fits=0,
        data_root=_data_root(ctx),
    )


def _data_root(ctx: RunContext) -> str | None:
    """The resolved data root of the run (what the timings were measured on)."""
    inv = ctx.state.inventory
    root = getattr(inv, "root", None)
    return str(Path(root).resolve()) if root is not None else None


def check_slice(sl: PreflightSlice, n_train_selected: int, n_val_selected: int) -> None:
    """Raise :class:`~nx47_pipeline.run.stages.RunFailed` when the slice cannot run."""
    if not sl.train or not sl.val:
        raise stages.RunFailed(
            f"preflight needs at least one training and one validation pair; "
            f"selected {n_train_selected} training and {n_val_selected} validation pairs"
        )
    if not sl.test:
        raise stages.RunFailed("preflight needs at least one test image; none found")


__all__: Sequence[str] = ["PHASES", "OutOfTime", "PreflightSlice", "preflight_slice", "preflight_deadline",
                          "run_chain", "check_slice"]
