"""Plain-Python dashboard state: reducers that take :class:`Event` objects.

The widgets in :mod:`nx47_widgets.views` are thin views over these objects.
Every state object has ``apply(event) -> bool`` (True when something visible
changed) and a ``version`` counter that increases on every visible change, so
the UI pump re-renders only what changed.  Nothing here imports ipywidgets:
tests drive the states directly with synthetic events.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from nx47_pipeline.telemetry.events import (
    Event,
    EventKind,
    PreviewPayload,
    WorkerState,
)

__all__ = [
    "BarState",
    "ProgressState",
    "HeartbeatState",
    "HeartbeatView",
    "CoverageModel",
    "PreviewState",
    "LogState",
    "ChartState",
    "ResultsState",
    "DashboardState",
    "format_duration",
    "LEVELS",
]

#: Bar styles understood by ipywidgets' ``bar_style``.
STYLE_INFO = "info"
STYLE_SUCCESS = "success"
STYLE_WARNING = "warning"
STYLE_DANGER = "danger"


def format_duration(seconds: float | None) -> str:
    """Human-readable duration: ``"42s"``, ``"3m05s"``, ``"2h04m"``, ``"-"`` for None.

    Examples
    --------
    >>> format_duration(185)
    '3m05s'
    >>> format_duration(None)
    '-'
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m"


# ---------------------------------------------------------------------------
# Progress bars
# ---------------------------------------------------------------------------
@dataclass
class BarState:
    """One progress bar: fraction in [0, 1], text and style.

    ``failed`` is sticky: once a bar is marked failed its style stays
    ``"danger"`` whatever progress arrives later, until :meth:`reset`.
    """

    value: float = 0.0
    text: str = ""
    style: str = STYLE_INFO
    failed: bool = False

    def set(self, value: float | None = None, text: str | None = None,
            style: str | None = None) -> None:
        if value is not None and math.isfinite(value):
            self.value = min(1.0, max(0.0, float(value)))
        if text is not None:
            self.text = text
        if style is not None and not self.failed:
            self.style = style

    def fail(self, text: str | None = None) -> None:
        self.failed = True
        self.style = STYLE_DANGER
        if text is not None:
            self.text = text

    def reset(self) -> None:
        self.value, self.text, self.style, self.failed = 0.0, "", STYLE_INFO, False

    def snapshot(self) -> tuple[float, str, str]:
        return (round(self.value, 4), self.text, self.style)


def _counter_text(what: str, done: float, total: float, rate: float | None = None,
                  eta_s: float | None = None) -> str:
    parts = [what] if what else []
    if total:
        d = int(done) if float(done).is_integer() else round(done, 1)
        t = int(total) if float(total).is_integer() else round(total, 1)
        parts.append(f"{d} of {t}")
    if rate is not None and rate > 0:
        parts.append(f"{rate:.3g}/s")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " · ".join(parts)


class ProgressState:
    """Reducer for the four bars: global, stage, sub-step and file."""

    NAMES = ("global", "stage", "substep", "file")

    def __init__(self) -> None:
        self.bars: dict[str, BarState] = {n: BarState() for n in self.NAMES}
        self.version = 0
        self.finished: str | None = None  # ok | failed | cancelled once done

    def _snap(self) -> tuple:
        return tuple(self.bars[n].snapshot() for n in self.NAMES)

    def apply(self, event: Event) -> bool:
        before = self._snap()
        kind, p = event.kind, event.payload
        g, st, sub, fl = (self.bars[n] for n in self.NAMES)
        if kind is EventKind.RUN_START:
            for b in self.bars.values():
                b.reset()
            self.finished = None
            g.set(0.0, "run started", STYLE_INFO)
        elif kind is EventKind.PROGRESS_UPDATE:
            eta = f" · ETA {format_duration(p.eta_s)}" if p.eta_s is not None else ""
            g.set(p.global_, f"overall · {100 * p.global_:.1f} %{eta}")
            step_label = f"{p.step} (stage {p.step_index + 1} of {p.step_count})" \
                if p.step_count else p.step
            frac = p.step_done / p.step_total if p.step_total else 0.0
            st.set(frac, _counter_text(step_label, p.step_done, p.step_total))
            sub_frac = p.substep_done / p.substep_total if p.substep_total else 0.0
            sub.set(sub_frac, _counter_text(p.substep, p.substep_done, p.substep_total,
                                            p.rate if not p.file_total else None))
            file_frac = p.file_done / p.file_total if p.file_total else 0.0
            fl.set(file_frac, _counter_text(p.file, p.file_done, p.file_total,
                                            p.rate if p.file_total else None))
        elif kind is EventKind.STEP:
            if p.phase == "begin":
                st.reset()
                sub.reset()
                fl.reset()
                st.set(0.0, f"{event.stage}: started")
            else:
                status = p.status
                took = f" in {format_duration(p.duration_s)}" if p.duration_s is not None else ""
                if status == "ok":
                    st.set(1.0, f"{event.stage}: done{took}", STYLE_SUCCESS)
                elif status == "skipped":
                    st.set(1.0, f"{event.stage}: skipped {p.message}".strip(), STYLE_WARNING)
                elif status in ("budget", "cancelled"):
                    st.set(None, f"{event.stage}: {status} {p.message}".strip(), STYLE_WARNING)
                else:
                    st.fail(f"{event.stage}: {status} {p.message}".strip())
        elif kind is EventKind.ERROR:
            target = fl if fl.text or fl.value else st
            target.fail(f"error: {p.message}")
        elif kind is EventKind.CANCELLED:
            g.set(None, f"cancelled: {p.message}", STYLE_WARNING)
        elif kind is EventKind.EXEC_COMPLETE:
            self.finished = p.status
            if p.status == "ok":
                g.set(1.0, f"finished in {format_duration(p.duration_s)}", STYLE_SUCCESS)
            elif p.status == "cancelled":
                g.set(None, f"cancelled after {format_duration(p.duration_s)}", STYLE_WARNING)
            else:
                g.fail(f"failed after {format_duration(p.duration_s)}")
        else:
            return False
        changed = self._snap() != before
        if changed:
            self.version += 1
        return changed


# ---------------------------------------------------------------------------
# Heartbeat
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HeartbeatView:
    """What the heartbeat light shows at one instant."""

    state: str  # WAITING | ACTIVE | COMPUTING | STALLED | FINISHED | FAILED | CANCELLED
    colour: str
    since_beat_s: float | None
    since_progress_s: float | None
    cpu_pct: float | None
    rss_mb: float | None
    message: str = ""

    @property
    def words(self) -> str:
        return {
            "WAITING": "waiting for the run",
            "ACTIVE": "active: progress is being reported",
            "COMPUTING": "computing: busy, no new progress yet",
            "STALLED": "stalled: no heartbeat or CPU activity",
            "FINISHED": "finished",
            "FAILED": "failed",
            "CANCELLED": "cancelled",
        }.get(self.state, self.state.lower())


COLOURS = {
    "WAITING": "#9e9e9e",
    "ACTIVE": "#2e7d32",
    "COMPUTING": "#1565c0",
    "STALLED": "#c62828",
    "FINISHED": "#2e7d32",
    "FAILED": "#c62828",
    "CANCELLED": "#ef6c00",
}


class HeartbeatState:
    """Reducer for HEARTBEAT events with a local stall detector.

    The light turns STALLED by itself when no heartbeat has arrived for
    ``stall_factor`` heartbeat intervals (at least ``min_stall_s`` seconds),
    even if the last beat said ACTIVE: a dead or frozen worker cannot say so.

    Parameters
    ----------
    clock : callable, optional
        Wall-clock source (``time.time``); tests inject a fake one.  Beat ages
        are measured against the events' ``ts`` so that a followed journal and
        an in-process queue agree.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 stall_factor: float = 3.0, min_stall_s: float = 3.0) -> None:
        self.clock = clock
        self.stall_factor = stall_factor
        self.min_stall_s = min_stall_s
        self.version = 0
        self.reset()

    def reset(self) -> None:
        self.running = False
        self.started_ts: float | None = None
        self.last_beat_ts: float | None = None
        self.last_progress_ts: float | None = None
        self.beat_state: str | None = None
        self.interval_s: float = 15.0
        self.cpu_pct: float | None = None
        self.rss_mb: float | None = None
        self.message = ""
        self.final: str | None = None

    def apply(self, event: Event) -> bool:
        kind, p = event.kind, event.payload
        if kind is EventKind.RUN_START:
            self.reset()
            self.running = True
            self.started_ts = event.ts
        elif kind is EventKind.CONFIG:
            interval = (p.config or {}).get("heartbeat_interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                self.interval_s = float(interval)
        elif kind is EventKind.HEARTBEAT:
            self.running = self.final is None
            self.last_beat_ts = event.ts
            self.beat_state = p.state
            self.interval_s = float(p.interval_s) if p.interval_s else self.interval_s
            self.cpu_pct = p.cpu_pct
            self.rss_mb = p.rss_mb
            self.message = p.message
            self.last_progress_ts = event.ts - float(p.since_progress_s)
            if p.state in (WorkerState.FINISHED.value, WorkerState.FAILED.value,
                           WorkerState.CANCELLED.value):
                self.final = p.state
        elif kind is EventKind.PROGRESS_UPDATE:
            self.last_progress_ts = event.ts
            if self.started_ts is None:
                self.started_ts = event.ts
                self.running = self.final is None
        elif kind is EventKind.EXEC_COMPLETE:
            self.final = {"ok": "FINISHED", "cancelled": "CANCELLED"}.get(
                p.status, "FAILED")
            self.running = False
        else:
            return False
        self.version += 1
        return True

    @property
    def stall_after_s(self) -> float:
        return max(self.min_stall_s, self.stall_factor * self.interval_s)

    def view(self, now: float | None = None) -> HeartbeatView:
        """The light at wall time ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        since_beat = None if self.last_beat_ts is None else max(0.0, now - self.last_beat_ts)
        since_prog = None if self.last_progress_ts is None else max(0.0, now - self.last_progress_ts)
        if self.final is not None:
            state = self.final
        elif not self.running:
            state = "WAITING"
        else:
            reference = self.last_beat_ts if self.last_beat_ts is not None else self.started_ts
            silent = None if reference is None else now - reference
            if silent is not None and silent > self.stall_after_s:
                state = "STALLED"
            elif self.beat_state in (WorkerState.ACTIVE.value, WorkerState.COMPUTING.value,
                                     WorkerState.STALLED.value):
                state = self.beat_state
            else:
                state = "ACTIVE"  # running, no beat yet, within the grace period
        return HeartbeatView(
            state=state,
            colour=COLOURS.get(state, "#9e9e9e"),
            since_beat_s=since_beat,
            since_progress_s=since_prog,
            cpu_pct=self.cpu_pct,
            rss_mb=self.rss_mb,
            message=self.message,
        )


# ---------------------------------------------------------------------------
# Coverage
# ---------------------------------------------------------------------------
class CoverageModel:
    """Coverage panel: discovered / selected / coverage % and budget projection.

    Parameters
    ----------
    n_pairs : int
        Image/label pairs found by discovery.
    n_test : int
        Test volumes found by discovery.
    config : RunConfig
        The run configuration the projection is made for.
    timings : PreflightTimings or None
        Timings of a preflight (``budget.load_preflight_timings``); without
        them no projection is shown.
    """

    def __init__(self, *, n_pairs: int, n_test: int, config: Any,
                 timings: Any = None) -> None:
        if n_pairs < 0:
            raise ValueError(f"n_pairs must be >= 0, got {n_pairs!r}")
        self.n_pairs = int(n_pairs)
        self.n_test = int(n_test)
        self.config = config
        self.timings = timings
        self.max_train = int(config.max_train_volumes)
        self.max_val = int(config.max_val_volumes)
        self.budget_s = float(config.budget_s)
        self.version = 0

    def update(self, *, max_train: int | None = None, max_val: int | None = None,
               budget_s: float | None = None, timings: Any = ...) -> None:
        if max_train is not None:
            if max_train < 0:
                raise ValueError(f"max_train must be >= 0 (0 means all), got {max_train!r}")
            self.max_train = int(max_train)
        if max_val is not None:
            if max_val < 0:
                raise ValueError(f"max_val must be >= 0 (0 means all), got {max_val!r}")
            self.max_val = int(max_val)
        if budget_s is not None:
            if budget_s <= 0:
                raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
            self.budget_s = float(budget_s)
        if timings is not ...:
            self.timings = timings
        self.version += 1

    def _config(self) -> Any:
        return self.config.replace(max_train_volumes=self.max_train,
                                   max_val_volumes=self.max_val, budget_s=self.budget_s)

    def summary(self) -> dict[str, Any]:
        """Numbers of the coverage panel.

        Returns
        -------
        dict
            ``discovered``, ``n_train``, ``n_val``, ``selected``,
            ``coverage_pct``, and when timings are known ``projected_s``,
            ``fits``, ``budget_s``, ``max_train_fit``, ``max_val_fit``,
            ``fit_projected_s``.
        """
        from nx47_pipeline.data.coverage import coverage_audit, plan_counts

        n_train, n_val = plan_counts(self.n_pairs, max_train_volumes=self.max_train,
                                     max_val_volumes=self.max_val)
        audit = coverage_audit(self.n_pairs, n_train, n_val,
                               max_train_volumes=self.max_train,
                               max_val_volumes=self.max_val)
        out: dict[str, Any] = {
            "discovered": audit["pair_count_discovered"],
            "selected": audit["pair_count_selected_for_training"],
            "coverage_pct": float(audit["coverage_pct_selected_vs_discovered"]),
            "n_train": n_train,
            "n_val": n_val,
            "n_test": self.n_test,
            "budget_s": self.budget_s,
        }
        if self.timings is not None:
            from nx47_pipeline.run.budget import largest_fit, project_run

            cfg = self._config()
            proj = project_run(self.timings, n_train=n_train, n_val=n_val,
                               n_test=self.n_test, config=cfg)
            out.update(projected_s=float(proj.total_s), fits=bool(proj.fits))
            mt, mv, ps = largest_fit(self.timings, n_pairs=self.n_pairs,
                                     n_test=self.n_test, config=cfg)
            out.update(max_train_fit=int(mt), max_val_fit=int(mv), fit_projected_s=float(ps))
        return out


# ---------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------
AXES = ("z", "y", "x")


class PreviewState:
    """Volumes seen so far and the current selection of the slice previewer.

    While ``follow`` is True every PREVIEW event selects its volume (and a
    suggested slice); :meth:`take_control` (the user touched a control) stops
    that until :meth:`follow_live` is called.
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.volumes: dict[str, PreviewPayload] = {}
        self.order: list[str] = []
        self.follow = True
        self.volume: str | None = None
        self.axis = "z"
        self.index = 0
        self.version = 0

    def key(self, payload: PreviewPayload) -> str:
        return f"{payload.split}/{payload.volume_id}"

    def apply(self, event: Event) -> bool:
        if event.kind is EventKind.RUN_START:
            out = event.payload.out_dir
            if out:
                self.out_dir = Path(out)
            return False
        if event.kind is not EventKind.PREVIEW:
            return False
        p: PreviewPayload = event.payload
        k = self.key(p)
        if k not in self.volumes:
            self.order.append(k)
        self.volumes[k] = p
        if self.follow or self.volume is None:
            self._select(k, self.axis if self.volume else "z", None)
        self.version += 1
        return True

    def _suggested(self, p: PreviewPayload, axis: str) -> int:
        idx = list((p.slices or {}).get(axis) or [])
        if idx:
            return int(idx[len(idx) // 2])
        size = self.axis_size(p, axis)
        return size // 2

    @staticmethod
    def axis_size(p: PreviewPayload, axis: str) -> int:
        shape = list(p.shape) if p.shape else [1, 1, 1]
        return int(shape[AXES.index(axis)])

    def _select(self, key: str, axis: str, index: int | None) -> None:
        if key not in self.volumes:
            raise KeyError(f"volume {key!r} has not been previewed yet; known: {self.order}")
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        p = self.volumes[key]
        self.volume, self.axis = key, axis
        size = self.axis_size(p, axis)
        self.index = self._suggested(p, axis) if index is None else int(index)
        self.index = min(max(self.index, 0), max(size - 1, 0))

    def select(self, volume: str | None = None, axis: str | None = None,
               index: int | None = None) -> None:
        """User selection (stops live following)."""
        self.take_control()
        vol = volume if volume is not None else self.volume
        if vol is None:
            return
        new_axis = axis if axis is not None else self.axis
        if index is None and (vol != self.volume or new_axis != self.axis):
            self._select(vol, new_axis, None)
        else:
            self._select(vol, new_axis, self.index if index is None else index)
        self.version += 1

    def take_control(self) -> None:
        if self.follow:
            self.follow = False
            self.version += 1

    def follow_live(self) -> None:
        self.follow = True
        if self.order:
            self._select(self.order[-1], self.axis, None)
        self.version += 1

    @property
    def current(self) -> PreviewPayload | None:
        return None if self.volume is None else self.volumes[self.volume]

    def resolve(self, path: str | None) -> Path | None:
        """Absolute path of an artifact (relative paths are under the output folder)."""
        if not path:
            return None
        pp = Path(path)
        if pp.is_absolute() or self.out_dir is None:
            return pp
        return self.out_dir / pp


# ---------------------------------------------------------------------------
# Event log
# ---------------------------------------------------------------------------
LEVELS = ("debug", "info", "warning", "error")

_KIND_LEVEL = {
    EventKind.ERROR: "error",
    EventKind.PREFLIGHT_FAIL: "error",
    EventKind.WARNING: "warning",
    EventKind.CANCELLED: "warning",
    EventKind.HEARTBEAT: "debug",
    EventKind.PROGRESS_UPDATE: "debug",
    EventKind.ARRAY_TRACE: "debug",
    EventKind.METRIC: "debug",
}


def event_level(event: Event) -> str:
    """Log level of an event (``debug`` < ``info`` < ``warning`` < ``error``)."""
    if event.kind is EventKind.STEP and event.payload.status == "failed":
        return "error"
    if event.kind is EventKind.EXEC_COMPLETE and event.payload.status != "ok":
        return "error" if event.payload.status == "failed" else "warning"
    return _KIND_LEVEL.get(event.kind, "info")


def event_text(event: Event) -> str:
    """One-line description of an event for the log."""
    p, k = event.payload, event.kind
    if k is EventKind.STEP:
        extra = f" {p.status}" if p.phase == "end" else ""
        took = f" ({format_duration(p.duration_s)})" if p.duration_s is not None else ""
        return f"{p.phase}{extra}{took} {p.message}".strip()
    if k is EventKind.PROGRESS_UPDATE:
        return f"{p.step} {p.step_done:g}/{p.step_total:g} global {100 * p.global_:.1f}%"
    if k is EventKind.HEARTBEAT:
        return f"{p.state} cpu {p.cpu_pct:.0f}% rss {p.rss_mb:.0f} MB since progress {p.since_progress_s:.0f}s"
    if k in (EventKind.WARNING, EventKind.ERROR, EventKind.CANCELLED):
        subj = f"[{p.subject}] " if p.subject else ""
        return f"{subj}{p.message}"
    if k is EventKind.METRIC:
        return f"{p.name} = {p.value:.5g}"
    if k is EventKind.PREVIEW:
        sc = "" if p.score is None else f" score {p.score:.3f}"
        return f"{p.split} {p.volume_id} ready{sc}"
    if k is EventKind.BUDGET:
        return f"{p.decision}: {p.message}"
    if k is EventKind.EXEC_COMPLETE:
        return f"{p.status} in {format_duration(p.duration_s)}; submission {p.submission}"
    if k is EventKind.COVERAGE_AUDIT:
        return (f"{p.pair_count_selected_for_training} of {p.pair_count_discovered} pairs "
                f"({p.coverage_pct_selected_vs_discovered:.1f}%), {p.n_test} test")
    if k in (EventKind.PREFLIGHT_OK, EventKind.PREFLIGHT_FAIL):
        return f"preflight {'ok' if p.ok else 'failed'} in {format_duration(p.duration_s)} {p.reason}".strip()
    if k is EventKind.RUN_START:
        return f"run {p.run_id} pid {p.pid}{' (resumed)' if p.resumed else ''} -> {p.out_dir}"
    if k is EventKind.ARRAY_TRACE:
        return f"{p.name} {p.shape} {p.dtype} mean {p.mean}"
    if k is EventKind.GLOBAL_STATS:
        return ", ".join(f"{a}={b}" for a, b in list(p.stats.items())[:6])
    return ""


@dataclass(frozen=True)
class LogEntry:
    seq: int
    t: float
    level: str
    kind: str
    stage: str
    text: str

    def line(self) -> str:
        return f"{self.t:8.1f}s {self.level.upper():7s} {self.kind:15s} {self.stage:10s} {self.text}"


class LogState:
    """Bounded event log with level and kind filters."""

    def __init__(self, maxlen: int = 5000) -> None:
        self.entries: collections.deque[LogEntry] = collections.deque(maxlen=maxlen)
        self.min_level = "info"
        self.kinds: set[str] | None = None  # None: all kinds
        self.version = 0

    def apply(self, event: Event) -> bool:
        entry = LogEntry(event.seq, event.t, event_level(event), event.kind.value,
                         event.stage, event_text(event))
        self.entries.append(entry)
        if self._visible(entry):
            self.version += 1
            return True
        return False

    def set_filter(self, *, min_level: str | None = None,
                   kinds: Iterable[str] | None | type(...) = ...) -> None:
        if min_level is not None:
            if min_level not in LEVELS:
                raise ValueError(f"min_level must be one of {LEVELS}, got {min_level!r}")
            self.min_level = min_level
        if kinds is not ...:
            self.kinds = None if kinds is None else {str(k) for k in kinds}
        self.version += 1

    def _visible(self, e: LogEntry) -> bool:
        return (LEVELS.index(e.level) >= LEVELS.index(self.min_level)
                and (self.kinds is None or e.kind in self.kinds))

    def visible(self, limit: int = 200) -> list[LogEntry]:
        """The last ``limit`` entries passing the filters, oldest first."""
        out: list[LogEntry] = []
        for e in reversed(self.entries):
            if self._visible(e):
                out.append(e)
                if len(out) >= limit:
                    break
        return out[::-1]


# ---------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------
class ChartState:
    """Series behind the charts, from METRIC / PREVIEW events.

    * ``objective``: fit_prox objective per iteration (METRIC named ``*objective*``
      outside the search stage; the search stage's are grid trials);
    * ``grid``: hyper-parameter grid points (METRIC from the search stage, or
      named ``*search*`` / ``*grid*``), one dict per point: its parameters
      and ``value`` (the search's ``*mean*`` score, else the running mean of
      the per-volume scores seen so far);
    * ``loss``: U-Net batch loss (METRIC named ``*loss*``; ``*epoch*loss``
      goes to ``epoch_loss``);
    * ``val_scores``: per-volume validation score (PREVIEW of split ``val``
      with a score, or METRIC named ``*val*score*`` with a ``volume_id``).
    """

    def __init__(self, max_points: int = 2000) -> None:
        self.max_points = max_points
        self.objective: list[tuple[float, float]] = []
        self.grid: list[dict[str, Any]] = []
        self.loss: list[tuple[float, float]] = []
        self.epoch_loss: list[tuple[float, float]] = []
        self._grid: dict[tuple, dict[str, Any]] = {}
        self.val_scores: dict[str, float] = {}
        self.version = 0

    @staticmethod
    def _push(series: list, point: tuple, cap: int) -> None:
        series.append(point)
        if len(series) > cap:
            del series[: len(series) - cap]

    def apply(self, event: Event) -> bool:
        p = event.payload
        if event.kind is EventKind.PREVIEW:
            if p.split == "val" and p.score is not None:
                self.val_scores[p.volume_id] = float(p.score)
                self.version += 1
                return True
            return False
        if event.kind is not EventKind.METRIC:
            return False
        name = p.name.lower()
        x = float(p.step) if p.step is not None else float(event.seq)
        extra = p.extra or {}
        if "loss" in name:
            if "epoch" in name:
                self.epoch_loss.append((x, float(p.value)))
                if self.loss:
                    self.version += 1
                    return True
                return False
            self._push(self.loss, (x, float(p.value)), self.max_points)
        elif "search" in event.stage.lower() or "search" in name or "grid" in name:
            params = {k: v for k, v in extra.items() if k not in ("volume_id", "n_volumes")}
            key = tuple(sorted((k, repr(v)) for k, v in params.items()))
            cell = self._grid.get(key)
            if cell is None:
                cell = self._grid[key] = {**params, "value": 0.0, "n": 0, "final": False}
                self.grid.append(cell)
            if "mean" in name:  # the search's own mean over volumes
                cell.update(value=float(p.value), final=True)
            elif not cell["final"]:  # running mean of per-volume scores until then
                cell["n"] += 1
                cell["value"] += (float(p.value) - cell["value"]) / cell["n"]
        elif "objective" in name:
            self._push(self.objective, (x, float(p.value)), self.max_points)
        elif "val" in name and "score" in name and extra.get("volume_id") is not None:
            self.val_scores[str(extra["volume_id"])] = float(p.value)
        else:
            return False
        self.version += 1
        return True


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
class ResultsState:
    """Submission path, GLOBAL_STATS and journal verification of a run."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.submission: str | None = None
        self.duration_s: float | None = None
        self.journal_head: str | None = None
        self.stats: dict[str, Any] = {}
        self.verification: Any = None
        self.out_dir: str | None = None
        self.version = 0

    def apply(self, event: Event) -> bool:
        p = event.payload
        if event.kind is EventKind.RUN_START:
            self.__init__()
            self.out_dir = p.out_dir
        elif event.kind is EventKind.GLOBAL_STATS:
            self.stats = dict(p.stats)
        elif event.kind is EventKind.EXEC_COMPLETE:
            self.status = p.status
            self.submission = p.submission
            self.duration_s = p.duration_s
            self.journal_head = p.journal_head
        else:
            return False
        self.version += 1
        return True

    def verify(self, journal_path: str | Path) -> Any:
        """Verify the run's journal (``journal.verify_journal``) and keep the result."""
        from nx47_pipeline.telemetry.journal import verify_journal

        self.verification = verify_journal(journal_path)
        self.version += 1
        return self.verification


# ---------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------
class DashboardState:
    """All reducers of one dashboard; :meth:`apply` routes an event to each."""

    PARTS = ("progress", "heartbeat", "preview", "log", "charts", "results")

    def __init__(self, *, out_dir: str | Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.progress = ProgressState()
        self.heartbeat = HeartbeatState(clock=clock)
        self.preview = PreviewState(out_dir)
        self.log = LogState()
        self.charts = ChartState()
        self.results = ResultsState()
        self.n_events = 0
        self.last_seq = -1
        self.run_id: str | None = None

    def apply(self, event: Event) -> set[str]:
        """Apply one event; return the names of the parts that changed."""
        self.n_events += 1
        self.last_seq = event.seq
        if event.kind is EventKind.RUN_START:
            self.run_id = event.payload.run_id
        changed = set()
        for name in self.PARTS:
            if getattr(self, name).apply(event):
                changed.add(name)
        return changed

    def apply_many(self, events: Iterable[Event]) -> set[str]:
        changed: set[str] = set()
        for ev in events:
            changed |= self.apply(ev)
        return changed

    def versions(self) -> dict[str, int]:
        return {name: getattr(self, name).version for name in self.PARTS}
