"""Typed telemetry events: the language every stage and the dashboard speak.

Every event carries ``seq`` (per-run sequence number), ``ts`` (wall-clock UNIX
time), ``t`` (seconds since the run started), ``kind`` (:class:`EventKind`),
``stage`` (the pipeline stage that emitted it) and a typed ``payload`` (one
dataclass per kind, see :data:`PAYLOAD_TYPES`).  ``Event.to_dict`` /
``Event.from_dict`` give the JSON form used by the journal and the queue.

The protocol is documented in ``docs/event-protocol.md``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar


class EventKind(str, enum.Enum):
    """Kinds of telemetry event (string enum: the value is the JSON name)."""

    RUN_START = "RUN_START"
    CONFIG = "CONFIG"
    STEP = "STEP"
    PROGRESS_UPDATE = "PROGRESS_UPDATE"
    HEARTBEAT = "HEARTBEAT"
    ARRAY_TRACE = "ARRAY_TRACE"
    METRIC = "METRIC"
    PREVIEW = "PREVIEW"
    COVERAGE_AUDIT = "COVERAGE_AUDIT"
    PREFLIGHT_OK = "PREFLIGHT_OK"
    PREFLIGHT_FAIL = "PREFLIGHT_FAIL"
    BUDGET = "BUDGET"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    GLOBAL_STATS = "GLOBAL_STATS"
    EXEC_COMPLETE = "EXEC_COMPLETE"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


#: Kinds a lossy consumer (the dashboard queue) must never drop.
MUST_DELIVER: frozenset[EventKind] = frozenset(
    {
        EventKind.RUN_START,
        EventKind.CONFIG,
        EventKind.STEP,
        EventKind.WARNING,
        EventKind.ERROR,
        EventKind.PREFLIGHT_OK,
        EventKind.PREFLIGHT_FAIL,
        EventKind.BUDGET,
        EventKind.CANCELLED,
        EventKind.GLOBAL_STATS,
        EventKind.EXEC_COMPLETE,
        EventKind.COVERAGE_AUDIT,
    }
)

#: Kinds where only the latest value matters (coalesced under pressure).
COALESCIBLE: frozenset[EventKind] = frozenset(
    {EventKind.PROGRESS_UPDATE, EventKind.HEARTBEAT}
)


class _Name(str, enum.Enum):
    """A protocol name: compares equal to, formats and serialises as its value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Severity(_Name):
    """How bad a reported problem is: a WARNING (the run goes on as it is) or an
    ERROR (the item is left out, the run goes on with the rest).  Discovery
    issues, task notes and the events they become share these words."""

    WARNING = "warning"
    ERROR = "error"


class StageName(_Name):
    """The pipeline's stages, in run order (the envelope's ``stage`` field)."""

    DISCOVERY = "discovery"
    PREFLIGHT = "preflight"
    FEATURES = "features"
    SEARCH = "search"
    FIT_PROX = "fit_prox"
    UNET = "unet"
    NNUNET = "nnunet"  # nx47 run --model-kind nnunet: nnU-Net's planning, preprocessing and training
    VALIDATE = "validate"
    SEGMENT = "segment"
    PACKAGE = "package"
    PROBABILITY = "probability"  # nx47 infer: chunked probabilities
    POSTPROCESS = "postprocess"  # nx47 infer: global post-processing


class Status(_Name):
    """Status of a stage (STEP ``status``, plan) or of a run (EXEC_COMPLETE)."""

    PENDING = "pending"  # plan only: not started
    RUNNING = "running"  # plan only: started, not ended
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET = "budget"  # stage cut by the budget
    PREFLIGHT_FAILED = "preflight_failed"  # run only: fallback submission written

    @property
    def done(self) -> bool:
        """True for every status but ``pending`` and ``running``."""
        return self not in (Status.PENDING, Status.RUNNING)


class MetricName(_Name):
    """METRIC names the pipeline publishes."""

    SEARCH_SCORE = "search_score"  # one grid point on one validation volume
    SEARCH_MEAN_SCORE = "search_mean_score"  # one grid point, mean over validation volumes
    FIT_PROX_OBJECTIVE = "fit_prox_objective"  # final fit, per iteration
    UNET_BATCH_LOSS = "unet_batch_loss"
    UNET_EPOCH_LOSS = "unet_epoch_loss"
    NNUNET_BATCH_LOSS = "nnunet_batch_loss"  # nnU-Net's training loss, per iteration
    NNUNET_TRAIN_LOSS = "nnunet_train_loss"  # per epoch (extra: val_loss, pseudo_dice, lr, seconds)
    NNUNET_VAL_LOSS = "nnunet_val_loss"  # per epoch
    NNUNET_PSEUDO_DICE = "nnunet_pseudo_dice"  # per epoch, nnU-Net's pseudo-Dice on validation patches
    NNUNET_LR = "nnunet_lr"  # per epoch, the learning rate
    VAL_SCORE = "val_score"  # one validation volume
    UNET_THRESHOLD_SCORE = "unet_threshold_score"  # one hysteresis pair on the U-Net's maps, mean over validation
    CONTEXT_THRESHOLD_SCORE = "context_threshold_score"  # one pair on the auto-context model's maps, the same
    MODEL_THRESHOLD_SCORE = "model_threshold_score"  # one choice on an imported nnU-Net's maps (--model), the same
    # one (dust size, plug size) of the chosen post-processing, mean over validation (search and U-Net sweep)
    POSTPROCESS_SCORE = "postprocess_score"


class BudgetDecision(_Name):
    """BUDGET ``decision`` values."""

    PROJECTION = "projection"
    AUTO_COVERAGE = "auto_coverage"
    DEADLINE = "deadline"
    FALLBACK = "fallback"
    PREFLIGHT = "preflight"
    REPROJECTION = "reprojection"  # after each stage: the remainder re-projected with the error so far
    TTA = "tta"  # whether the U-Net's flip TTA fits the budget (RunConfig.unet_tta)
    # nnU-Net predictions that do not fit, in this order (nx47_pipeline.nnunet.budget.fit_to_budget)
    NNUNET_MIRRORING = "nnunet_mirroring"  # mirror test-time augmentation dropped
    NNUNET_MEMBERS = "nnunet_members"  # the lowest-weight ensemble member dropped
    NNUNET_TILE_STEP = "nnunet_tile_step"  # the tile step widened
    NNUNET_EPOCHS = "nnunet_epochs"  # nnU-Net trains fewer epochs than asked: the measured pace, the deadline


class Split(_Name):
    """PREVIEW ``split`` values."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class StepPhase(_Name):
    BEGIN = "begin"
    END = "end"


class WorkerState(_Name):
    """Worker classification carried by HEARTBEAT events."""

    ACTIVE = "ACTIVE"  # progress reported recently
    COMPUTING = "COMPUTING"  # no recent progress, CPU time advancing
    STALLED = "STALLED"  # no progress and no CPU advancing
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


# --------------------------------------------------------------------------
# Payloads.  Each is a plain dataclass; ``to_dict`` gives JSON-ready values.
# --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Base payload: ``to_dict`` / ``from_dict`` round-trip through JSON."""

    #: JSON keys that differ from attribute names (attribute -> key).
    _renames: ClassVar[dict[str, str]] = {}
    #: Fields whose value must be a member of an enum (checked and converted
    #: on construction, so a reader can compare with ``is``).
    _enums: ClassVar[dict[str, type[enum.Enum]]] = {}

    def __post_init__(self) -> None:
        for name, kind in self._enums.items():
            value = getattr(self, name)
            try:
                member = kind(value)
            except ValueError:
                allowed = ", ".join(m.value for m in kind)
                raise ValueError(
                    f"{type(self).__name__}.{name} must be one of {allowed}; got {value!r}"
                ) from None
            object.__setattr__(self, name, member)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[self._renames.get(f.name, f.name)] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Payload":
        inverse = {v: k for k, v in cls._renames.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        extra = {}
        for key, value in data.items():
            attr = inverse.get(key, key)
            if attr in names:
                kwargs[attr] = value
            else:
                extra[key] = value
        if "extra" in names and extra:
            kwargs["extra"] = {**kwargs.get("extra", {}), **extra}
        return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class RunStartPayload(Payload):
    run_id: str
    out_dir: str
    pid: int
    host: str = ""
    resumed: bool = False


@dataclass(frozen=True, kw_only=True)
class ConfigPayload(Payload):
    config: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class StepPayload(Payload):
    """Begin or end of a stage (``phase`` is ``"begin"`` or ``"end"``)."""

    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"phase": StepPhase, "status": Status}

    phase: StepPhase
    status: Status = Status.OK  # on end: ok | skipped | failed | cancelled | budget
    duration_s: float | None = None
    index: int = 0  # position of the stage in the plan
    count: int = 0  # number of stages in the plan
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ProgressPayload(Payload):
    """Progress at every level.  ``global_`` is serialised as ``"global"``."""

    _renames: ClassVar[dict[str, str]] = {"global_": "global"}

    step: str
    step_index: int
    step_count: int
    step_done: float
    step_total: float
    substep: str = ""
    substep_done: int = 0
    substep_total: int = 0
    file: str = ""
    file_done: int = 0
    file_total: int = 0
    global_: float = 0.0
    rate: float | None = None  # units of the finest counter per second
    eta_s: float | None = None  # whole-run ETA
    message: str = ""
    worker: str = ""  # the Dask worker that did the work ("" in process)


@dataclass(frozen=True, kw_only=True)
class HeartbeatPayload(Payload):
    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"state": WorkerState}

    state: WorkerState
    since_progress_s: float
    cpu_pct: float  # process CPU use since the previous beat (100 = one core)
    worker_cpu_s: float | None  # worker thread CPU time, when measurable
    rss_mb: float
    elapsed_s: float
    budget_left_s: float | None
    interval_s: float
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ArrayTracePayload(Payload):
    name: str
    shape: list[int]
    dtype: str
    min: float | None
    max: float | None
    mean: float | None
    digest: str
    digest_method: str


@dataclass(frozen=True, kw_only=True)
class MetricPayload(Payload):
    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"name": MetricName}

    name: MetricName
    value: float
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PreviewPayload(Payload):
    """A volume is ready to look at: paths are relative to the output folder
    unless absolute (source images and labels live in the data root)."""

    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"split": Split}

    volume_id: str
    split: Split
    shape: list[int]
    image_path: str
    label_path: str | None = None
    pred_path: str | None = None
    prob_path: str | None = None
    slices: dict[str, list[int]] = field(default_factory=dict)
    score: float | None = None


@dataclass(frozen=True, kw_only=True)
class CoverageAuditPayload(Payload):
    pair_count_discovered: int
    pair_count_selected_for_training: int
    coverage_pct_selected_vs_discovered: float
    max_train_volumes: int
    max_val_volumes: int
    n_train: int
    n_val: int
    n_test: int
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class PreflightPayload(Payload):
    ok: bool
    reason: str = ""
    duration_s: float = 0.0
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BudgetPayload(Payload):
    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"decision": BudgetDecision}

    decision: BudgetDecision
    message: str
    budget_s: float | None = None
    projected_s: float | None = None
    fits: bool | None = None
    max_train_fit: int | None = None
    max_val_fit: int | None = None
    deadline_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MessagePayload(Payload):
    """WARNING / ERROR / CANCELLED: ``subject`` names the id or file."""

    message: str
    subject: str = ""
    code: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class GlobalStatsPayload(Payload):
    stats: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ExecCompletePayload(Payload):
    _enums: ClassVar[dict[str, type[enum.Enum]]] = {"status": Status}

    status: Status  # ok | failed | cancelled | preflight_failed
    submission: str | None = None
    duration_s: float = 0.0
    journal_head: str | None = None


PAYLOAD_TYPES: dict[EventKind, type[Payload]] = {
    EventKind.RUN_START: RunStartPayload,
    EventKind.CONFIG: ConfigPayload,
    EventKind.STEP: StepPayload,
    EventKind.PROGRESS_UPDATE: ProgressPayload,
    EventKind.HEARTBEAT: HeartbeatPayload,
    EventKind.ARRAY_TRACE: ArrayTracePayload,
    EventKind.METRIC: MetricPayload,
    EventKind.PREVIEW: PreviewPayload,
    EventKind.COVERAGE_AUDIT: CoverageAuditPayload,
    EventKind.PREFLIGHT_OK: PreflightPayload,
    EventKind.PREFLIGHT_FAIL: PreflightPayload,
    EventKind.BUDGET: BudgetPayload,
    EventKind.WARNING: MessagePayload,
    EventKind.ERROR: MessagePayload,
    EventKind.CANCELLED: MessagePayload,
    EventKind.GLOBAL_STATS: GlobalStatsPayload,
    EventKind.EXEC_COMPLETE: ExecCompletePayload,
}


@dataclass(frozen=True, kw_only=True)
class Event:
    """One telemetry event."""

    seq: int
    ts: float
    t: float
    kind: EventKind
    stage: str
    payload: Payload

    def __post_init__(self) -> None:
        expected = PAYLOAD_TYPES[self.kind]
        if not isinstance(self.payload, expected):
            raise TypeError(
                f"payload for {self.kind.value} must be {expected.__name__}, "
                f"got {type(self.payload).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "t": self.t,
            "kind": self.kind.value,
            "stage": self.stage,
            "payload": self.payload.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Event":
        kind = EventKind(data["kind"])
        payload = PAYLOAD_TYPES[kind].from_dict(dict(data.get("payload") or {}))
        return cls(
            seq=int(data["seq"]),
            ts=float(data["ts"]),
            t=float(data["t"]),
            kind=kind,
            stage=str(data.get("stage", "")),
            payload=payload,
        )
