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


class WorkerState(str, enum.Enum):
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

    phase: str
    status: str = "ok"  # ok | skipped | failed | cancelled | budget
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


@dataclass(frozen=True, kw_only=True)
class HeartbeatPayload(Payload):
    state: str  # a WorkerState value
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
    name: str
    value: float
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PreviewPayload(Payload):
    """A volume is ready to look at: paths are relative to the output folder
    unless absolute (source images and labels live in the data root)."""

    volume_id: str
    split: str  # train | val | test
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
    decision: str  # projection | auto_coverage | deadline | fallback | ...
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
    status: str  # ok | failed | cancelled
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
