"""Runtime budget planner.

The mandatory preflight runs the whole chain on a small slice of the data and
records how long each unit of work took (:class:`PreflightTimings`, written to
``<out>/preflight/timings.json``).  From those rates the planner projects the
full run for any coverage (:func:`project_run`), finds the largest coverage
that fits the budget (:func:`largest_fit`), and gives every stage a deadline
that keeps back the time needed to segment all test volumes and package
(:class:`Deadlines`).

All projections scale linearly with voxels (features, segmentation,
validation) or with sample rows x iterations (fit_prox), which is how these
stages behave; a safety factor covers the rest.  The optional U-Net's cost
(:class:`UNetCost`: training batches and sliding-window inference) is part of
the same projection, so the coverage :func:`largest_fit` picks is the one the
run's own projection says fits.  Every cost formula of a run lives here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import plan_counts
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.model.search import SearchGrid
from nx47_pipeline.telemetry.events import StageName
from nx47_pipeline.unet.backend import cuda_available
from nx47_pipeline.unet.params import UNetParams

#: Multiplier applied to the time kept back for segmentation and fallbacks
#: (a deadline must err on the safe side).  Projections are best estimates:
#: the budget's own ``safety_margin_frac`` is their margin.
SAFETY_FACTOR = 1.3

#: Fallback rates (seconds per million voxels) used when no preflight ran.
DEFAULT_SEGMENT_S_PER_MVOX = 4.0

#: Model segmentation with thin-surface extraction against without (the
#: preflight times it without): 320^3 on 2 cores, 4.3-4.8 s for a volume
#: and 3.7-4.6 s more with thinning, on a map with 24 % of its voxels above
#: the low threshold (docs/benchmarks.md, "Compute stages per volume").
THIN_SEGMENT_FACTOR = 2.0
#: Model segmentation with hole plugging (``plug_size`` > 0) against
#: without: the plug's closing and labelling took 1.3 s on a 320^3 mask of
#: ten wavy sheets (2 busy cores), against 4.3-4.8 s for a volume without.
PLUG_SEGMENT_FACTOR = 1.3
FALLBACK_S_PER_MVOX = 0.3
#: Seconds always kept back at the end of a run (packaging, GLOBAL_STATS).
RESERVE_MARGIN_S = 2.0

#: Rough seconds per million voxels of each per-volume stage on a 2-core
#: machine (320^3 volumes, docs/benchmarks.md): only to weigh the overall
#: progress bar before the preflight has measured the run's own rates
#: (:func:`prior_stage_seconds`).  ``search`` is per validation volume
#: searched, ``fit_prox`` per training volume.
PRIOR_S_PER_MVOX = {"features": 0.15, "search": 4.0, "fit_prox": 0.3, "validate": 0.8,
                    "segment": 0.2, "package": 0.03}


@dataclass(frozen=True, kw_only=True)
class PreflightTimings:
    """Measured rates from the preflight (seconds per unit of work)."""

    features_s_per_mvox: float  # load + features + sampling of a training volume
    search_s_per_mvox: float  # one validation volume through the whole grid
    fit_s_per_iter_row: float  # one fit_prox iteration per sample row
    validate_s_per_mvox: float  # segment + score a validation volume
    segment_s_per_mvox: float  # segment a test volume (model path)
    fallback_s_per_mvox: float  # the cheap fallback segmentation
    package_s_per_volume: float
    mvox_train: float  # mean million voxels per training pair
    mvox_test: float  # mean million voxels per test volume
    rows_per_volume: float  # sample rows contributed by one training volume
    grid_fits: int  # number of (l1, l2) fits in the search grid
    unet_s_per_batch: float | None = None
    # iterations the preflight's fits needed when they converged (None: they
    # ran to their cap, so the real run is projected at its own cap)
    search_iters_converged: float | None = None  # mean per grid fit
    fit_iters_converged: float | None = None  # the final fit, warm-started from the search
    measured_at: float = field(default_factory=time.time)
    # the data root the preflight measured (resolved); None in older files
    data_root: str | None = None
    # the auto-context rounds: their fit per million training voxels of a volume they were fitted on, and
    # their threshold sweep per million voxels of a searched validation volume (0: not measured, older files);
    # in a run with an imported nnU-Net bundle (--model), that model's sweep (stages.MODEL_SWEEP)
    context_s_per_mvox: float = 0.0
    context_sweep_s_per_mvox: float = 0.0

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "PreflightTimings":
        data = json.loads(Path(path).read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_preflight_timings(out_dir: str | Path) -> PreflightTimings | None:
    """The timings of the preflight run in ``out_dir``, or None if absent or unreadable."""
    path = RunFolder(out_dir).timings
    try:
        return PreflightTimings.load(path)
    except (OSError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------
# U-Net cost
# ---------------------------------------------------------------------------
#: Seconds of one training batch for the reference shape (width 16, depth 3,
#: patch 64, batch 2) when nothing better is known.  CPU: 3.8 s measured on a
#: shared 2-core x86_64 machine (benchmarks/results/unet.md).  CUDA: not
#: measured in this project; 0.1 s is a guess for a T4/P100.  Prefer a
#: measurement with :func:`nx47_pipeline.unet.time_train_step`.
REFERENCE_STEP_SECONDS = {"cpu": 3.8, "cuda": 0.1}
_REFERENCE = UNetParams()


@dataclass(frozen=True)
class UNetCost:
    """Cost model of the U-Net stage.

    Formula (``s`` = seconds of one training batch)::

        batches_per_epoch = steps_per_epoch
                            or ceil(n_train_volumes * patches_per_volume / batch)
        train   = epochs * batches_per_epoch * s * (1 + val_fraction / 3)
        windows = prod over axes of (ceil((side - patch) / step) + 1),
                  side = voxels_per_volume ** (1/3), step = patch * (1 - overlap)
        infer   = ceil(windows / batch) * (s / 2) * (8 if tta_flip else 1)   per volume

    A forward pass of a window batch is taken as half a training step
    (forward + backward + update); the CPU benchmark measured 0.35-0.55,
    GPUs are usually nearer 1/3, so the figure errs on the long side.
    Validation batches are counted as a third of a step.  Without a measured
    ``seconds_per_patch_batch`` the figure is :data:`REFERENCE_STEP_SECONDS`
    for ``device`` scaled by ``(patch / 64)**3 * (batch / 2) * (width / 16)**2``
    (convolution cost grows with the voxels and the square of the channels).

    Parameters
    ----------
    params : UNetParams
        Hyper-parameters.
    seconds_per_patch_batch : float or None
        Measured seconds of one training batch (the preflight measures it).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available): which
        reference figure to use when nothing was measured.
    """

    params: UNetParams
    seconds_per_patch_batch: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        s = self.seconds_per_patch_batch
        if s is not None and not s > 0:
            raise ValueError(f"seconds_per_patch_batch must be > 0 or None, got {s!r}")

    @property
    def step_s(self) -> float:
        """Seconds of one training batch (measured, else the reference figure)."""
        if self.seconds_per_patch_batch is not None:
            return float(self.seconds_per_patch_batch)
        device = str(self.device)
        if device == "auto":
            kind = "cuda" if cuda_available() else "cpu"
        else:
            kind = "cuda" if device.startswith("cuda") else "cpu"
        p = self.params
        return REFERENCE_STEP_SECONDS[kind] * (
            (p.patch / _REFERENCE.patch) ** 3
            * (p.batch / _REFERENCE.batch)
            * (p.width / _REFERENCE.width) ** 2
        )

    def train_s(self, n_train_volumes: int) -> float:
        """Seconds to train on ``n_train_volumes`` volumes."""
        if n_train_volumes < 0:
            raise ValueError(f"n_train_volumes must be >= 0, got {n_train_volumes!r}")
        p = self.params
        per_epoch = p.steps_per_epoch or math.ceil(n_train_volumes * p.patches_per_volume / p.batch)
        return float(p.epochs * per_epoch * self.step_s * (1.0 + p.val_fraction / 3.0))

    def infer_s(self, voxels_per_volume: float) -> float:
        """Seconds of sliding-window inference on one volume of ``voxels_per_volume``."""
        if not voxels_per_volume > 0:
            raise ValueError(f"voxels_per_volume must be > 0, got {voxels_per_volume!r}")
        p = self.params
        side = float(voxels_per_volume) ** (1.0 / 3.0)
        step = max(1.0, round(p.patch * (1.0 - p.overlap)))
        windows = (math.ceil(max(0.0, side - p.patch) / step) + 1) ** 3
        return float(math.ceil(windows / p.batch) * (self.step_s / 2.0) * (8 if p.tta_flip else 1))

    def total_s(self, *, n_train_volumes: int, voxels_per_volume: float, n_infer_volumes: int = 0) -> float:
        """Training plus inference on ``n_infer_volumes`` volumes."""
        if n_infer_volumes < 0:
            raise ValueError(f"n_infer_volumes must be >= 0, got {n_infer_volumes!r}")
        return self.train_s(n_train_volumes) + n_infer_volumes * self.infer_s(voxels_per_volume)


def _unet_infer_s(unet: UNetCost | None, mvox: float) -> float:
    return unet.infer_s(mvox * 1e6) if unet is not None and mvox > 0 else 0.0


@dataclass(frozen=True)
class Projection:
    """Projected duration of a full run."""

    total_s: float
    per_stage: dict[str, float]
    budget_s: float
    usable_s: float  # budget less the safety margin
    fits: bool
    n_train: int
    n_val: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_rows(n_train: int, timings: PreflightTimings, config: RunConfig) -> float:
    """Sample rows the final fit sees for ``n_train`` volumes (capped by the config)."""
    return min(n_train * timings.rows_per_volume, float(config.max_total_samples))


def search_val_count(n_val: int, config: RunConfig) -> int:
    """Validation volumes the search scores its grid on: the first
    ``search_max_val_volumes`` of ``n_val`` (0 = all)."""
    k = config.search_max_val_volumes
    return min(n_val, k) if k else n_val


def search_grid_args(config: RunConfig) -> dict[str, Any]:
    """The grid arguments of :func:`~nx47_pipeline.model.search.run_search`
    for ``config``: the search stage runs with them and :func:`search_units`
    counts them, so both see the same grid (closing radii included)."""
    return {
        "l1_grid": config.l1_grid, "l2_grid": config.l2_grid,
        "thresholds": config.threshold_grid, "gap": config.hysteresis_gap,
        "closing_radius": config.closing_radius, "closing_radii": config.closing_radii(),
        "min_size": config.min_component_voxels,
        "dust_sizes": config.dust_sizes(), "plug_sizes": config.plug_sizes(),
        "top_k": config.search_top_k,
    }


def search_grid(config: RunConfig) -> SearchGrid:
    """The search's grid for ``config`` (:func:`search_grid_args`, normalised
    as the search normalises it)."""
    return SearchGrid.build(**search_grid_args(config))


def search_units(config: RunConfig, *, n_val: int) -> int:
    """The search's amount of work (its progress total) on ``n_val``
    validation volumes, of which it searches :func:`search_val_count`: fits,
    rankings, full evaluations and the dust / plug size candidates
    (:meth:`nx47_pipeline.model.search.SearchGrid.units`, the count the search
    itself reports).  Its time is projected from the preflight's search,
    which runs the same candidates per volume (``search_s_per_mvox``)."""
    return search_grid(config).units(search_val_count(n_val, config))


def sweep_s(timings: PreflightTimings | None, *, n_val: int, config: RunConfig) -> float:
    """Seconds of a threshold sweep on the validation maps (the auto-context
    rounds' or an imported nnU-Net's): ``context_sweep_s_per_mvox`` on each of
    the :func:`search_val_count` volumes it scores; 0 before the preflight."""
    if timings is None:
        return 0.0
    return search_val_count(n_val, config) * timings.mvox_train * timings.context_sweep_s_per_mvox


def context_count(n_train: int, config: RunConfig) -> int:
    """Training volumes the auto-context rounds are fitted on: at most
    ``context_max_volumes`` (0 = all) of ``n_train``; 0 when
    ``context_rounds`` is 0 or fewer than 2 (its maps are cross-fitted on
    two halves)."""
    if config.context_rounds <= 0 or n_train < 2:
        return 0
    cap = config.context_max_volumes
    return int(n_train if cap <= 0 else min(cap, n_train))


def project_run(
    timings: PreflightTimings,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    config: RunConfig,
    unet: UNetCost | None = None,
    model_sweep: bool = False,
) -> Projection:
    """Project the duration of a run at the given coverage.

    Parameters
    ----------
    timings : PreflightTimings
        Rates measured by the preflight.
    n_train, n_val, n_test : int
        Number of training pairs, validation pairs and test volumes.
    config : RunConfig
        Gives iteration counts, grid size and the budget.
    unet : UNetCost, optional
        The U-Net's cost model when the U-Net is on: its training goes to
        the ``unet`` stage, its inference to ``validate`` and ``segment``.
    model_sweep : bool
        A run with an imported nnU-Net bundle: its post-processing sweep
        (:func:`sweep_s`) goes to ``validate``, as the auto-context rounds' does.
    """
    rows = fit_rows(n_train, timings, config)
    s = 1.0  # best estimate (see SAFETY_FACTOR)
    # per-volume stages run as parallel tasks on a Dask scheduler: each
    # worker takes ceil(n / workers) volumes one after the other
    w = parallel_workers(config)
    n_train_w, n_val_w, n_test_w = (math.ceil(k / w) for k in (n_train, n_val, n_test))
    search_iters = _iters(timings.search_iters_converged, config.search_max_iter)
    fit_iters = _iters(timings.fit_iters_converged, config.fit_max_iter)
    per_stage = {
        "features": s * n_train_w * timings.mvox_train * timings.features_s_per_mvox,
        "search": s
        * (
            timings.grid_fits * search_iters * rows * timings.fit_s_per_iter_row
            + search_val_count(n_val, config) * timings.mvox_train * timings.search_s_per_mvox
        ),
        "fit_prox": s * (fit_iters * rows * timings.fit_s_per_iter_row
                         + context_count(n_train, config) * timings.mvox_train * timings.context_s_per_mvox),
        "unet": s * unet.train_s(n_train) if unet is not None else 0.0,
        "validate": s * (n_val_w * (timings.mvox_train * timings.validate_s_per_mvox
                                    + _unet_infer_s(unet, timings.mvox_train))
                         + (sweep_s(timings, n_val=n_val, config=config)
                            if model_sweep or (unet is None and context_count(n_train, config)) else 0.0)),
        "segment": s * n_test_w * (timings.mvox_test * timings.segment_s_per_mvox
                                 + _unet_infer_s(unet, timings.mvox_test)),
        "package": s * n_test * timings.package_s_per_volume + 1.0,
    }
    total = float(sum(per_stage.values()))
    usable = config.budget_s * (1.0 - config.safety_margin_frac)
    return Projection(
        total_s=total,
        per_stage=per_stage,
        budget_s=config.budget_s,
        usable_s=usable,
        fits=total <= usable,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
    )


def prior_stage_seconds(*, n_train: int, n_val: int, n_test: int, mvox_train: float, mvox_test: float,
                        preflight_counts: tuple[int, int, int], config: RunConfig) -> dict[str, float]:
    """Rough seconds per stage before any preflight (:data:`PRIOR_S_PER_MVOX`).

    Only their ratios matter: they weigh the overall progress bar until the
    preflight's projection replaces them.  The preflight runs the whole
    chain on its slice (``preflight_counts`` = train, validation, test
    volumes), so it weighs what those volumes cost in the real stages; on a
    small coverage that is a large share of the run.
    """
    r = PRIOR_S_PER_MVOX
    n_search = search_val_count(n_val, config)

    def chain(tr: int, va: int, te: int, search_va: int) -> dict[str, float]:
        return {
            "features": tr * mvox_train * r["features"],
            "search": search_va * mvox_train * r["search"],
            "fit_prox": tr * mvox_train * r["fit_prox"],
            "validate": va * mvox_train * r["validate"],
            "segment": te * mvox_test * r["segment"],
            "package": te * mvox_test * r["package"] + 1.0,
        }

    out = chain(n_train, n_val, n_test, n_search)
    pf_tr, pf_va, pf_te = preflight_counts
    out["preflight"] = sum(chain(pf_tr, pf_va, pf_te, pf_va).values()) + pf_te * mvox_test * FALLBACK_S_PER_MVOX
    return out


def validation_reserve_s(timings: PreflightTimings | None, *, n_val: int, config: RunConfig,
                         unet: UNetCost | None) -> float:
    """Seconds the validate stage needs after the U-Net has trained: every
    validation pair segmented with the U-Net and by fit_prox alone (to keep
    the U-Net only when it validates better), with :data:`SAFETY_FACTOR`.
    The U-Net trains until the training deadline less this."""
    if timings is None or n_val <= 0:
        return 0.0
    n = math.ceil(n_val / parallel_workers(config))
    linear = timings.mvox_train * timings.validate_s_per_mvox
    return SAFETY_FACTOR * n * (2.0 * linear + _unet_infer_s(unet, timings.mvox_train))


def parallel_workers(config: RunConfig) -> int:
    """What the projection divides the per-volume stages' volumes by:
    ``config.workers`` on a Dask scheduler (the preflight timed one volume in
    process), else 1 -- in process, tasks at once on threads included, the
    preflight timed the stages on the run's own executor, so its rates
    already are their throughput."""
    return max(1, int(config.workers)) if config.scheduler else 1


def _iters(converged: float | None, cap: int) -> float:
    """Iterations a fit is projected to take: what the preflight's converged
    fits took (at least 1), else the cap."""
    return float(cap) if converged is None else float(min(cap, max(1.0, converged)))


#: Flip TTA is planned (``unet_tta="auto"``) when its extra inference takes
#: at most this share of the usable time left: eight passes instead of one
#: improved the score by about 0.01-0.04 on validation and test volumes
#: (docs/model.md), a gain training epochs past the middle of the run did
#: not bring.
TTA_MAX_SHARE = 0.25


def tta_extra_s(unet: UNetCost, timings: PreflightTimings, *, n_val: int, n_test: int) -> float:
    """Seconds flip TTA adds to the U-Net inference of ``n_val`` validation
    and ``n_test`` test volumes (safety factor included)."""
    on = dataclasses.replace(unet, params=dataclasses.replace(unet.params, tta_flip=True))
    off = dataclasses.replace(unet, params=dataclasses.replace(unet.params, tta_flip=False))
    per_val = _unet_infer_s(on, timings.mvox_train) - _unet_infer_s(off, timings.mvox_train)
    per_test = _unet_infer_s(on, timings.mvox_test) - _unet_infer_s(off, timings.mvox_test)
    return SAFETY_FACTOR * (n_val * per_val + n_test * per_test)


def tta_fits(unet: UNetCost, timings: PreflightTimings | None, *, n_val: int, n_test: int,
             remaining_s: float) -> tuple[bool, float]:
    """Whether flip TTA fits: its extra seconds (:func:`tta_extra_s`) at most
    :data:`TTA_MAX_SHARE` of ``remaining_s``.  Returns ``(fits, extra_s)``;
    without preflight timings it does not fit (nothing to size it with)."""
    if timings is None:
        return False, float("nan")
    extra = tta_extra_s(unet, timings, n_val=n_val, n_test=n_test)
    return extra <= TTA_MAX_SHARE * max(remaining_s, 0.0), extra


def unet_projected_s(proj: Projection, timings: PreflightTimings, unet: UNetCost | None) -> float:
    """The U-Net's share of ``proj``: training plus inference on validation and test volumes."""
    if unet is None:
        return 0.0
    return proj.per_stage["unet"] + (
        proj.n_val * _unet_infer_s(unet, timings.mvox_train)
        + proj.n_test * _unet_infer_s(unet, timings.mvox_test)
    )


def largest_fit(
    timings: PreflightTimings,
    *,
    n_pairs: int,
    n_test: int,
    config: RunConfig,
    remaining_s: float | None = None,
    unet: UNetCost | None = None,
) -> tuple[int, int, float]:
    """The largest coverage whose projection fits the budget.

    Candidates keep the train:val proportion of the defaults (3:1) and grow
    one pair at a time up to ``n_pairs``; each is projected with
    :func:`project_run` (``unet`` included), the run's own projection.

    Returns
    -------
    (max_train, max_val, projected_s)
        ``(0, 0, projected)`` of the smallest candidate when nothing fits
        (the run then relies on the fallback).
    """
    usable = config.budget_s * (1.0 - config.safety_margin_frac)
    if remaining_s is not None:
        usable = min(usable, remaining_s)
    best: tuple[int, int, float] | None = None
    smallest: float | None = None
    for total in range(2, max(n_pairs, 2) + 1):
        n_val = max(1, round(total / 4))
        n_train = total - n_val
        n_train, n_val = plan_counts(n_pairs, max_train_volumes=n_train, max_val_volumes=n_val)
        proj = project_run(timings, n_train=n_train, n_val=n_val, n_test=n_test, config=config, unet=unet)
        if smallest is None:
            smallest = proj.total_s
        if proj.total_s <= usable:
            best = (n_train, n_val, proj.total_s)
        else:
            break
    if best is None:
        return 0, 0, float(smallest or 0.0)
    return best


@dataclass
class Deadlines:
    """Stage deadlines on the monotonic clock.

    ``hard`` is the start plus the usable budget; every stage before
    segmentation must end early enough to leave the projected time of
    segmenting all test volumes and packaging (the *reserve*).
    """

    start: float
    budget_s: float
    safety_margin_frac: float
    reserve_s: float = 0.0

    @property
    def hard(self) -> float:
        return self.start + self.budget_s * (1.0 - self.safety_margin_frac)

    @property
    def training(self) -> float:
        """Deadline for every stage that precedes segmentation."""
        return self.hard - self.reserve_s

    def left(self, now: float | None = None) -> float:
        return self.hard - (time.monotonic() if now is None else now)


def segment_reserve_s(
    timings: PreflightTimings | None, *, n_test: int, mvox_test: float, unet: UNetCost | None = None
) -> float:
    """Seconds to keep back for segmenting ``n_test`` volumes and packaging."""
    rate = timings.segment_s_per_mvox if timings else DEFAULT_SEGMENT_S_PER_MVOX
    pack = timings.package_s_per_volume if timings else 0.05
    per_volume = mvox_test * rate + _unet_infer_s(unet, mvox_test) + pack
    return SAFETY_FACTOR * n_test * per_volume + RESERVE_MARGIN_S


def fallback_needed_s(timings: PreflightTimings | None, *, mvox: float) -> float:
    """Seconds to keep back for the fallback segmentation of one volume of ``mvox`` million voxels."""
    rate = timings.fallback_s_per_mvox if timings else FALLBACK_S_PER_MVOX
    return SAFETY_FACTOR * mvox * rate + 0.05


def model_segment_need_s(
    timings: PreflightTimings | None,
    *,
    mvox: float,
    rest_mvox: list[float] | tuple[float, ...],
    unet: UNetCost | None = None,
    thin: bool = False,
    plug: bool = False,
) -> float:
    """Seconds needed to segment one volume of ``mvox`` million voxels with
    the model and still give the fallback to every volume after it
    (``rest_mvox``); the segment stage falls back when less is left.
    ``thin``: the post-processing extracts the thin surface
    (:data:`THIN_SEGMENT_FACTOR`); ``plug``: it plugs holes
    (:data:`PLUG_SEGMENT_FACTOR`)."""
    rate = timings.segment_s_per_mvox if timings else DEFAULT_SEGMENT_S_PER_MVOX
    if thin:
        rate *= THIN_SEGMENT_FACTOR
    if plug:
        rate *= PLUG_SEGMENT_FACTOR
    return (
        SAFETY_FACTOR * (mvox * rate + _unet_infer_s(unet, mvox))
        + sum(fallback_needed_s(timings, mvox=m) for m in rest_mvox)
        + 1.0
    )


def preflight_reserve_s(timings: PreflightTimings | None, *, test_mvox: list[float] | tuple[float, ...]) -> float:
    """Seconds the preflight must leave: the fallback of every test volume and the end margin."""
    return sum(fallback_needed_s(timings, mvox=m) for m in test_mvox) + RESERVE_MARGIN_S


def ceil_frac(n: int, frac: float) -> int:
    """``ceil(frac * n)``, at least 1 when ``n`` > 0."""
    return max(1, math.ceil(frac * n - 1e-9)) if n > 0 else 0


# ---------------------------------------------------------------------------
# the plan of a run
# ---------------------------------------------------------------------------
#: The smallest weight a stage of the plan gets (a stage projected at 0 s
#: still moves the overall bar a little when it runs).
MIN_STAGE_WEIGHT = 0.01

#: Stages an inference-only run (``--model``) does not run: their prior weight is 0.
TRAINING_ONLY_STAGES = (StageName.FEATURES, StageName.SEARCH, StageName.FIT_PROX)


@dataclass(frozen=True)
class RunPlan:
    """The plan of a run, worked out in one place (:func:`plan_run`).

    The orchestrator applies it as it is: ``stage_weights`` go to the
    telemetry's :class:`~nx47_pipeline.telemetry.plan.PlanTracker` (whose
    snapshot is ``plan.json``), ``segment_reserve_s`` to the training
    deadline, ``validation_reserve_s`` to the U-Net's deadline,
    ``search_units`` to the search stage's progress total, and
    ``projection`` is what BUDGET ``reprojection`` compares each stage with.

    Attributes
    ----------
    stage_weights : dict of str to float
        Weight of each stage: projected seconds after the preflight, rough
        seconds before it (:func:`prior_stage_seconds`), at least
        :data:`MIN_STAGE_WEIGHT`.
    projection : Projection or None
        The projection of the run (None before the preflight measured it).
    segment_reserve_s : float
        Seconds kept back for segmenting every test volume and packaging
        (:func:`segment_reserve_s`).
    validation_reserve_s : float
        Seconds the validate stage needs after the U-Net has trained
        (:func:`validation_reserve_s`).
    search_units : int
        The search's amount of work (:func:`search_units`).
    """

    stage_weights: dict[str, float]
    projection: Projection | None
    segment_reserve_s: float
    validation_reserve_s: float
    search_units: int

    @property
    def projected_s(self) -> dict[str, float]:
        """Projected seconds per stage (empty before the preflight)."""
        return dict(self.projection.per_stage) if self.projection is not None else {}


def plan_run(
    timings: PreflightTimings | None,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    mvox_test: float,
    config: RunConfig,
    unet: UNetCost | None = None,
    mvox_train: float = 0.0,
    preflight_counts: tuple[int, int, int] = (0, 0, 0),
    model_sweep: bool = False,
    extra_s: Mapping[str, float] | None = None,
) -> RunPlan:
    """The plan of a run at this coverage: the one place it is worked out.

    Parameters
    ----------
    timings : PreflightTimings or None
        The preflight's rates; None before the preflight (the stage weights
        are then :func:`prior_stage_seconds`, and stages an inference-only
        run does not run weigh nothing).
    n_train, n_val, n_test : int
        Training pairs, validation pairs and test volumes of the run.
    mvox_test : float
        Mean million voxels of a test volume.
    config : RunConfig
        The run's configuration.
    unet : UNetCost, optional
        The U-Net's cost model as the run will use it (flip TTA decided),
        when the U-Net is on.
    mvox_train : float
        Mean million voxels of a training pair (the prior weights only).
    preflight_counts : (int, int, int)
        Training, validation and test volumes of the preflight's slice (the
        prior weights only).
    model_sweep : bool
        A run with an imported nnU-Net bundle: its post-processing sweep is
        projected in ``validate`` (:func:`project_run`).
    extra_s : mapping of str to float, optional
        Seconds added to stages, for work the preflight does not time: an
        nnU-Net trained in the run (``nnunet``: until its deadline or its
        epochs' end; ``validate`` and ``segment``: its windows at the pace
        its trainer measured).

    Returns
    -------
    RunPlan
    """
    if timings is None:
        prior = prior_stage_seconds(n_train=n_train, n_val=n_val, n_test=n_test, mvox_train=mvox_train,
                                    mvox_test=mvox_test, preflight_counts=preflight_counts, config=config)
        if config.model_dir:  # inference only: nothing trains
            prior.update({str(name): 0.0 for name in TRAINING_ONLY_STAGES})
        seconds, projection = prior, None
    else:
        projection = project_run(timings, n_train=n_train, n_val=n_val, n_test=n_test, config=config, unet=unet,
                                 model_sweep=model_sweep)
        seconds = projection.per_stage
    if extra_s:
        seconds = dict(seconds)
        for name, value in extra_s.items():
            seconds[str(name)] = seconds.get(str(name), 0.0) + float(value)
        if projection is not None:
            total = float(sum(seconds.values()))
            projection = dataclasses.replace(projection, per_stage=dict(seconds), total_s=total,
                                             fits=total <= projection.usable_s)
    return RunPlan(
        stage_weights={name: max(s, MIN_STAGE_WEIGHT) for name, s in seconds.items()},
        projection=projection,
        segment_reserve_s=segment_reserve_s(timings, n_test=n_test, mvox_test=mvox_test, unet=unet),
        validation_reserve_s=validation_reserve_s(timings, n_val=n_val, config=config, unet=unet),
        search_units=search_units(config, n_val=n_val),
    )
