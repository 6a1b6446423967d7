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
stages behave; a safety factor covers the rest.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nx47_pipeline.io.atomic import write_json
from nx47_pipeline.config import RunConfig

#: Multiplier applied to projected times (preflight rates on small data are
#: optimistic: caches are warm, volumes are small).
SAFETY_FACTOR = 1.3

#: Fallback rates (seconds per million voxels) used when no preflight ran.
DEFAULT_SEGMENT_S_PER_MVOX = 4.0
FALLBACK_S_PER_MVOX = 0.3
#: Seconds always kept back at the end of a run (packaging, GLOBAL_STATS).
RESERVE_MARGIN_S = 2.0


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
    measured_at: float = field(default_factory=time.time)

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "PreflightTimings":
        data = json.loads(Path(path).read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_preflight_timings(out_dir: str | Path) -> PreflightTimings | None:
    """The timings of the preflight run in ``out_dir``, or None if absent or unreadable."""
    path = Path(out_dir) / "preflight" / "timings.json"
    try:
        return PreflightTimings.load(path)
    except (OSError, ValueError, TypeError):
        return None


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


def project_run(
    timings: PreflightTimings,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    config: RunConfig,
    use_unet: bool = False,
    unet_s: float = 0.0,
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
    use_unet : bool
        Whether to add ``unet_s`` seconds for the U-Net stage.
    """
    rows = fit_rows(n_train, timings, config)
    s = SAFETY_FACTOR
    per_stage = {
        "features": s * n_train * timings.mvox_train * timings.features_s_per_mvox,
        "search": s
        * (
            timings.grid_fits * config.search_max_iter * rows * timings.fit_s_per_iter_row
            + n_val * timings.mvox_train * timings.search_s_per_mvox
        ),
        "fit_prox": s * config.fit_max_iter * rows * timings.fit_s_per_iter_row,
        "unet": unet_s if use_unet else 0.0,
        "validate": s * n_val * timings.mvox_train * timings.validate_s_per_mvox,
        "segment": s * n_test * timings.mvox_test * timings.segment_s_per_mvox,
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


def largest_fit(
    timings: PreflightTimings,
    *,
    n_pairs: int,
    n_test: int,
    config: RunConfig,
    remaining_s: float | None = None,
) -> tuple[int, int, float]:
    """The largest coverage whose projection fits the budget.

    Candidates keep the train:val proportion of the defaults (3:1) and grow
    one pair at a time up to ``n_pairs``.

    Returns
    -------
    (max_train, max_val, projected_s)
        ``(0, 0, projected)`` of the smallest candidate when nothing fits
        (the run then relies on the fallback).
    """
    from nx47_pipeline.data.coverage import plan_counts

    usable = config.budget_s * (1.0 - config.safety_margin_frac)
    if remaining_s is not None:
        usable = min(usable, remaining_s)
    best: tuple[int, int, float] | None = None
    smallest: float | None = None
    for total in range(2, max(n_pairs, 2) + 1):
        n_val = max(1, round(total / 4))
        n_train = total - n_val
        n_train, n_val = plan_counts(n_pairs, max_train_volumes=n_train, max_val_volumes=n_val)
        proj = project_run(timings, n_train=n_train, n_val=n_val, n_test=n_test, config=config)
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
    timings: PreflightTimings | None, *, n_test: int, mvox_test: float
) -> float:
    """Seconds to keep back for segmenting ``n_test`` volumes and packaging."""
    rate = timings.segment_s_per_mvox if timings else DEFAULT_SEGMENT_S_PER_MVOX
    pack = timings.package_s_per_volume if timings else 0.05
    return SAFETY_FACTOR * n_test * (mvox_test * rate + pack) + RESERVE_MARGIN_S


def fallback_needed_s(timings: PreflightTimings | None, *, mvox: float) -> float:
    rate = timings.fallback_s_per_mvox if timings else FALLBACK_S_PER_MVOX
    return SAFETY_FACTOR * mvox * rate + 0.05


def ceil_frac(n: int, frac: float) -> int:
    """``ceil(frac * n)``, at least 1 when ``n`` > 0."""
    return max(1, math.ceil(frac * n - 1e-9)) if n > 0 else 0
