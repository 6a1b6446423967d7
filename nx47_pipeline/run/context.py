"""What the stages of one run share, explicitly.

:class:`RunContext` holds what does not change during a run: the config
(frozen, and fixed for the run: assigning another one raises), the output
folder, telemetry, cancellation and deadlines (whose training reserve the
run's plan sets once it is made).  The run's results so far are in
:class:`RunState`, which only the orchestrator reads and writes: each stage
function (:mod:`.stages`, :mod:`.preflight`) takes what it needs as
arguments (or reads artifacts) and returns what it produces, and the
orchestrator stores it in the state and hands it to the stages after.
What a run decides on the way is a value of its own, never a change to the
config: the plan (:class:`~nx47_pipeline.run.budget.RunPlan`), the U-Net
plan (:class:`UNetPlan`), a bundle's post-processing (:class:`PostDefaults`).

:class:`Reporter` is how a stage talks to the user: warnings, errors and
progress always reach the bus; METRIC, PREVIEW, ARRAY_TRACE and deadline
BUDGET events only when it ``publishes`` (the preflight runs the same stage
functions with a quiet reporter, so the dashboard shows the real run only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.coverage import Selection
from nx47_pipeline.data.discovery import Inventory
from nx47_pipeline.io.run_folder import RunFolder
from nx47_pipeline.model.linear import LogisticModel
from nx47_pipeline.model.predict import UNetPart
from nx47_pipeline.run.budget import Deadlines, PreflightTimings, RunPlan, UNetCost
from nx47_pipeline.telemetry.cancel import CancelToken
from nx47_pipeline.telemetry.events import ArrayTracePayload, BudgetDecision, EventKind, MetricName, PreviewPayload
from nx47_pipeline.telemetry.facade import Telemetry

#: ``progress(done, total, **fields)``: PROGRESS_UPDATE of the current stage.
ProgressFn = Callable[..., None]


@dataclass(frozen=True)
class Samples:
    """The training sample: class-balanced rows and the class-prior correction."""

    X: np.ndarray
    y: np.ndarray
    prior_shift: float  # see nx47_pipeline.model.linear.prior_shift


@dataclass(frozen=True)
class UNetPlan:
    """Whether the run trains the U-Net, why, and its cost model."""

    use: bool
    why: str
    cost: UNetCost | None = None  # None when off


@dataclass(frozen=True)
class PostDefaults:
    """The post-processing a run falls back on: the fallback segmentation's
    closing radius and dust size, which a ``best`` that names none takes too.

    A run takes its config's (:meth:`of_config`); a run with ``--model``
    its bundle's, decided once when the bundle loads (the run's config stays
    as it started).
    """

    closing_radius: tuple[int, int, int]
    min_size: int

    @classmethod
    def of_config(cls, cfg: RunConfig) -> "PostDefaults":
        """``cfg.closing_radius`` and ``cfg.min_component_voxels``."""
        return cls(closing_radius=tuple(int(v) for v in cfg.closing_radius), min_size=int(cfg.min_component_voxels))


@dataclass
class RunState:
    """Results of the stages so far (set by the orchestrator from return values)."""

    inventory: Inventory | None = None
    selection: Selection | None = None
    audit: dict[str, Any] = field(default_factory=dict)
    timings: PreflightTimings | None = None
    unet_plan: UNetPlan = field(default_factory=lambda: UNetPlan(False, "U-Net not planned"))
    best: dict[str, Any] = field(default_factory=dict)
    model: LogisticModel | None = None
    unet: UNetPart | None = None
    val_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    fallback_ids: list[str] = field(default_factory=list)
    resumed: bool = False
    error_text: str = ""
    bundle_summary: str = ""  # a run with --model: what the bundle holds
    plan: RunPlan | None = None  # the run's plan after the preflight (budget.plan_run)
    #: a run with --model: its bundle's post-processing defaults; None: the config's
    post_defaults: PostDefaults | None = None
    #: a run with an imported nnU-Net bundle: its post-processing is chosen on validation
    #: (stages.MODEL_SWEEP, from the bundle's); a linear bundle keeps its own
    model_sweep: bool = False


#: RunContext fields fixed once set (the run's surroundings).
_FIXED = frozenset({"config", "out", "tel", "deadlines", "cancel", "t_start"})


@dataclass
class RunContext:
    """One run: its fixed surroundings and its :class:`RunState`.

    ``config``, ``out``, ``tel``, ``deadlines``, ``cancel`` and ``t_start``
    are set once: assigning one again raises AttributeError.
    """

    config: RunConfig
    out: Path
    tel: Telemetry
    deadlines: Deadlines
    cancel: CancelToken
    t_start: float = field(default_factory=time.monotonic)
    #: where per-volume tasks run: InProcess, or a DaskExecutor (``--scheduler``)
    executor: Any = None
    state: RunState = field(default_factory=RunState)
    n_warnings: int = 0
    n_errors: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIXED and name in self.__dict__:
            raise AttributeError(f"RunContext.{name} is fixed for the run")
        super().__setattr__(name, value)

    @property
    def folder(self) -> RunFolder:
        """The output folder's artifacts by name (:class:`~nx47_pipeline.io.run_folder.RunFolder`)."""
        return RunFolder(self.out)

    def warn(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.n_warnings += 1
        self.tel.warning(message, subject=subject, code=code)

    def err(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.n_errors += 1
        self.tel.error(message, subject=subject, code=code)

    def progress(self, done: float, total: float, **fields: Any) -> None:
        self.tel.progress(step_done=done, step_total=total, **fields)

    def reporter(self, *, publish: bool = True, progress: ProgressFn | None = None) -> "Reporter":
        return Reporter(self, progress or self.progress, publish)


@dataclass
class Reporter:
    """A stage's voice: see the module docstring."""

    ctx: RunContext
    progress: ProgressFn
    publish: bool = True

    def warn(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.ctx.warn(message, subject=subject, code=code)

    def err(self, message: str, *, subject: str = "", code: str = "") -> None:
        self.ctx.err(message, subject=subject, code=code)

    def metric(self, name: MetricName, value: float, **extra: Any) -> None:
        if self.publish:
            self.ctx.tel.metric(MetricName(name), float(value), **extra)

    def trace(self, name: str, array: Any) -> None:
        if self.publish:
            self.ctx.tel.trace(name, array)

    def emit_trace(self, payload: ArrayTracePayload) -> None:
        """An ARRAY_TRACE computed elsewhere (a task, maybe on a Dask worker)."""
        if self.publish:
            self.ctx.tel.trace(payload.name, payload)

    def preview(self, payload: PreviewPayload) -> None:
        if self.publish:
            self.ctx.tel.emit(EventKind.PREVIEW, payload)

    def deadline_hit(self, stage: str, what: str) -> None:
        """BUDGET ``deadline``: ``stage`` stopped early at the training deadline."""
        if self.publish:
            ctx = self.ctx
            ctx.tel.budget(
                BudgetDecision.DEADLINE,
                f"{stage}: deadline reached, {what}",
                budget_s=ctx.config.budget_s,
                deadline_s=ctx.deadlines.training - ctx.t_start,
            )

    def budget(self, decision: BudgetDecision, message: str, **fields: Any) -> None:
        if self.publish:
            self.ctx.tel.budget(decision, message, **fields)
