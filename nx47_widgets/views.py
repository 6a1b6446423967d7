"""ipywidgets views over the plain-Python states of :mod:`nx47_widgets.state`.

Each panel owns its widgets and has ``render(...)`` which copies the state
into the widgets, setting a trait only when its value changed (every change
is one comm message, so :class:`Syncer` counts them).  Panels never read
events themselves; the dashboard's UI pump calls ``render`` after applying a
batch.  Charts are inline SVG (no plotting dependency).
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any, Iterable, Sequence

import ipywidgets as W

from nx47_pipeline.telemetry.format import format_duration

from .state import (
    AXES,
    LEVELS,
    ChartState,
    CoverageModel,
    HeartbeatState,
    LogState,
    PreviewState,
    ProgressState,
    ResultsState,
)

__all__ = [
    "Syncer",
    "ProgressPanel",
    "HeartbeatPanel",
    "CoveragePanel",
    "PreviewPanel",
    "LogPanel",
    "ChartsPanel",
    "ResultsPanel",
    "svg_line_chart",
    "svg_bar_chart",
]


class Syncer:
    """Set widget traits only when they change, and count the changes.

    ``changes`` counts trait updates sent to the front end (one comm message
    each, or one per widget inside ``hold_sync``); ``messages`` counts
    widgets synced (one message per widget per :meth:`set` call).
    """

    def __init__(self) -> None:
        self.changes = 0
        self.messages = 0
        self._lock = threading.Lock()

    def set(self, widget: W.Widget, **traits: Any) -> bool:
        diff = {k: v for k, v in traits.items() if getattr(widget, k) != v}
        if not diff:
            return False
        with widget.hold_sync():
            for k, v in diff.items():
                setattr(widget, k, v)
        with self._lock:
            self.changes += len(diff)
            self.messages += 1
        return True


def _h(text: Any) -> str:
    return html.escape(str(text))


def _section(title: str) -> W.HTML:
    return W.HTML(f"<h3 style='margin:8px 0 2px 0'>{_h(title)}</h3>")


# ---------------------------------------------------------------------------
class ProgressPanel:
    """Four labelled FloatProgress bars: global, stage, sub-step, file."""

    LABELS = {"global": "Overall", "stage": "Stage", "substep": "Sub-step", "file": "File"}

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.bars: dict[str, W.FloatProgress] = {}
        self.texts: dict[str, W.HTML] = {}
        rows = []
        for name in ProgressState.NAMES:
            bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                  description=self.LABELS[name],
                                  layout=W.Layout(width="420px"))
            bar.add_class(f"nx47-bar-{name}")
            text = W.HTML("", layout=W.Layout(width="auto"))
            text.add_class(f"nx47-bartext-{name}")
            self.bars[name], self.texts[name] = bar, text
            rows.append(W.HBox([bar, text]))
        self.widget = W.VBox([_section("Progress"), *rows])
        self.widget.add_class("nx47-progress")

    def render(self, state: ProgressState) -> None:
        for name, bar_state in state.bars.items():
            self.syncer.set(self.bars[name], value=round(bar_state.value, 4),
                            bar_style=bar_state.style)
            self.syncer.set(self.texts[name], value=_h(bar_state.text))


# ---------------------------------------------------------------------------
class HeartbeatPanel:
    """Coloured light, state in words, seconds since beat / progress, CPU, memory."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("")
        self.html.add_class("nx47-heartbeat")
        self.widget = W.VBox([_section("Heartbeat"), self.html])
        self.state = "WAITING"

    def render(self, state: HeartbeatState, now: float | None = None) -> None:
        v = state.view(now)
        self.state = v.state

        def secs(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f}s ago"

        cpu = "-" if v.cpu_pct is None else f"{v.cpu_pct:.0f}%"
        rss = "-" if v.rss_mb is None else f"{v.rss_mb:.0f} MB"
        body = (
            f"<div class='nx47-hb' data-state='{v.state}' style='display:flex;"
            f"align-items:center;gap:10px'>"
            f"<span class='nx47-light' style='display:inline-block;width:18px;height:18px;"
            f"border-radius:9px;background:{v.colour};box-shadow:0 0 6px {v.colour}'></span>"
            f"<b class='nx47-hb-state' style='color:{v.colour}'>{v.state}</b>"
            f"<span>{_h(v.words)}</span>"
            f"<span>· last beat {secs(v.since_beat_s)} · last progress "
            f"{secs(v.since_progress_s)} · CPU {cpu} · memory {rss}</span></div>"
        )
        if v.message:
            body += f"<div style='color:#555'>{_h(v.message)}</div>"
        self.syncer.set(self.html, value=body)


# ---------------------------------------------------------------------------
class CoveragePanel:
    """Discovered / selected / coverage % and the budget verdict."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("")
        self.html.add_class("nx47-coverage")
        self.widget = self.html
        self.last: dict[str, Any] = {}

    def render(self, model: CoverageModel | None, note: str = "") -> None:
        if model is None:
            self.syncer.set(self.html, value=f"<div class='nx47-cov'>{_h(note or 'no data discovered yet')}</div>")
            return
        s = model.summary()
        self.last = s
        rows = [
            ("discovered pairs", f"<span class='nx47-discovered'>{s['discovered']}</span>"),
            ("selected", f"<span class='nx47-selected'>{s['selected']}</span> "
                         f"({s['n_train']} train + {s['n_val']} val)"),
            ("coverage", f"<span class='nx47-coverage-pct'>{s['coverage_pct']:.1f}%</span>"),
            ("test volumes", str(s["n_test"])),
            ("budget", format_duration(s["budget_s"])),
        ]
        if "projected_s" in s:
            ok = s["fits"]
            colour = "#2e7d32" if ok else "#c62828"
            verdict = "fits" if ok else "does not fit"
            rows.append(("projected", f"{format_duration(s['projected_s'])} — "
                         f"<b class='nx47-fits' style='color:{colour}'>{verdict}</b>"))
            if s["max_train_fit"] or s["max_val_fit"]:
                rows.append(("largest that fits",
                             f"{s['max_train_fit']} train + {s['max_val_fit']} val "
                             f"({format_duration(s['fit_projected_s'])})"))
            else:
                rows.append(("largest that fits", "none: the run relies on the fallback"))
        else:
            rows.append(("projection", "run a preflight (or a run) to project the duration"))
        body = "<table class='nx47-cov'>" + "".join(
            f"<tr><td style='padding-right:12px;color:#555'>{_h(k)}</td><td>{v}</td></tr>"
            for k, v in rows) + "</table>"
        if getattr(model.config, "auto_coverage", False):
            body += ("<div style='color:#1565c0'>auto coverage is on: after its preflight "
                     "the run replaces these caps by the largest coverage that fits the "
                     "budget</div>")
        if note:
            body += f"<div style='color:#555'>{_h(note)}</div>"
        self.syncer.set(self.html, value=body)


# ---------------------------------------------------------------------------
class PreviewPanel:
    """Slice previewer: volume, axis, slice, overlays, opacity, PNG image.

    Rendering runs on :class:`~nx47_widgets.render.AsyncRenderer`'s thread;
    user changes to a control stop live following (``state.take_control``).
    """

    def __init__(self, syncer: Syncer, state: PreviewState,
                 lock: threading.RLock | None = None) -> None:
        from .render import AsyncRenderer

        self.syncer = syncer
        self.state = state
        self.volume = W.Dropdown(options=[], description="Volume")
        self.axis = W.ToggleButtons(options=list(AXES), value="z", description="Axis",
                                    style={"button_width": "40px"})
        self.index = W.IntSlider(value=0, min=0, max=0, description="Slice",
                                 continuous_update=False)
        self.overlays = {
            name: W.Checkbox(value=name in ("label", "pred"), description=desc, indent=False,
                             layout=W.Layout(width="auto"))
            for name, desc in (("label", "label"), ("pred", "prediction"),
                               ("prob", "probability"), ("error", "error map"))
        }
        self.opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05,
                                     description="Opacity", continuous_update=False)
        self.follow = W.Checkbox(value=True, description="Follow live", indent=False)
        self.image = W.Image(format="png", layout=W.Layout(max_width="512px"))
        self.image.add_class("nx47-preview-image")
        self.info = W.HTML("<i>no volume previewed yet</i>")
        self.info.add_class("nx47-preview-info")
        self.renderer = AsyncRenderer(self._on_png, self._on_error)
        self._updating = False
        # shared with the pump's flush: user changes and event batches never interleave
        self._lock = lock if lock is not None else threading.RLock()
        for w in (self.volume, self.axis, self.index):
            w.observe(self._on_user, names="value")
        for w in (*self.overlays.values(), self.opacity):
            w.observe(self._on_style, names="value")
        self.follow.observe(self._on_follow, names="value")
        controls = W.VBox([
            W.HBox([self.volume, self.follow]), self.axis, self.index,
            W.HBox(list(self.overlays.values())), self.opacity, self.info,
        ])
        self.widget = W.VBox([_section("Slice preview"), W.HBox([controls, self.image])])
        self.widget.add_class("nx47-preview")

    # -- user actions -----------------------------------------------------
    def _on_user(self, change: dict) -> None:
        if self._updating:
            return
        with self._lock:
            owner = change["owner"]
            if owner is self.volume and change["new"]:
                self.state.select(volume=change["new"])
            elif owner is self.axis:
                self.state.select(axis=change["new"])
            elif owner is self.index:
                self.state.select(index=change["new"])
            self.render()

    def _on_style(self, change: dict) -> None:
        if not self._updating:
            self.request()

    def _on_follow(self, change: dict) -> None:
        if self._updating:
            return
        with self._lock:
            if change["new"]:
                self.state.follow_live()
            else:
                self.state.take_control()
            self.render()

    # -- state -> widgets ---------------------------------------------------
    def render(self) -> None:
        with self._lock:
            st = self.state
            self._updating = True
            try:
                labels = [(k, k) for k in st.order]
                if list(self.volume.options) != labels:
                    self.volume.options = labels
                    self.syncer.changes += 1
                self.syncer.set(self.follow, value=st.follow)
                p = st.current
                if p is None:
                    return
                size = st.axis_size(p, st.axis)
                self.syncer.set(self.volume, value=st.volume)
                self.syncer.set(self.axis, value=st.axis)
                self.syncer.set(self.index, max=max(size - 1, 0))
                self.syncer.set(self.index, value=st.index)
                score = "" if p.score is None else f" · score {p.score:.3f}"
                self.syncer.set(self.info, value=(
                    f"<span class='nx47-preview-vol'>{_h(p.split)} {_h(p.volume_id)}</span>"
                    f" {_h('x'.join(str(s) for s in p.shape))}{score}"
                    f" · {st.axis}={st.index}"))
            finally:
                self._updating = False
            self.request()

    def make_request(self):
        from .render import SliceRequest

        p = self.state.current
        if p is None:
            return None
        res = self.state.resolve
        overlays = tuple(n for n, cb in self.overlays.items() if cb.value)
        return SliceRequest(
            image=str(res(p.image_path)), axis=self.state.axis, index=int(self.state.index),
            label=str(res(p.label_path)) if p.label_path else None,
            pred=str(res(p.pred_path)) if p.pred_path else None,
            prob=str(res(p.prob_path)) if p.prob_path else None,
            overlays=overlays, opacity=float(self.opacity.value),
        )

    def request(self) -> None:
        req = self.make_request()
        if req is not None:
            self.renderer.request(req)

    def _on_png(self, req, png: bytes) -> None:
        self.syncer.set(self.image, value=png)

    def _on_error(self, req, exc: BaseException) -> None:
        self.syncer.set(self.info, value=f"<span style='color:#c62828'>cannot render "
                                         f"{_h(req.image)}: {_h(exc)}</span>")


# ---------------------------------------------------------------------------
class LogPanel:
    """Event log (last lines) with a minimum level and a kind filter."""

    def __init__(self, syncer: Syncer, state: LogState, kinds: Sequence[str],
                 lock: threading.RLock | None = None) -> None:
        self.syncer = syncer
        self.state = state
        self._lock = lock if lock is not None else threading.RLock()
        self.level = W.Dropdown(options=list(LEVELS), value=state.min_level,
                                description="Level")
        self.kind = W.Dropdown(options=["all", *kinds], value="all", description="Kind")
        self.text = W.Textarea(value="", layout=W.Layout(width="100%", height="220px"),
                               disabled=True)
        self.text.add_class("nx47-log")
        self.level.observe(self._on_filter, names="value")
        self.kind.observe(self._on_filter, names="value")
        self.widget = W.VBox([_section("Event log"), W.HBox([self.level, self.kind]), self.text])

    def _on_filter(self, change: dict) -> None:
        with self._lock:
            kind = self.kind.value
            self.state.set_filter(min_level=self.level.value,
                                  kinds=None if kind == "all" else [kind])
            self.render()

    def render(self, limit: int = 200) -> None:
        lines = [e.line() for e in self.state.visible(limit)]
        self.syncer.set(self.text, value="\n".join(lines))


# ---------------------------------------------------------------------------
def svg_line_chart(points: Sequence[tuple[float, float]], *, title: str,
                   width: int = 320, height: int = 160, log_y: bool = False) -> str:
    """A small SVG line chart of ``points`` (x, y) with min/max labels."""
    pts = [(float(x), float(y)) for x, y in points
           if math.isfinite(x) and math.isfinite(y) and (not log_y or y > 0)]
    head = f"<div style='font-size:12px'><b>{_h(title)}</b></div>"
    if len(pts) < 1:
        return head + f"<svg width='{width}' height='{height}'><text x='10' y='20' " \
                      f"fill='#888'>no data yet</text></svg>"
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [p[0] for p in pts]
    ys = [fy(p[1]) for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 24
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)
    coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}"
                      for x, y in zip(xs, ys))
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    return head + (
        f"<svg width='{width}' height='{height}' style='background:#fafafa'>"
        f"<polyline fill='none' stroke='#1565c0' stroke-width='1.5' points='{coords}'/>"
        f"<text x='2' y='{pad - 6}' font-size='10' fill='#555'>{hi:.4g}</text>"
        f"<text x='2' y='{height - 4}' font-size='10' fill='#555'>{lo:.4g}</text>"
        f"<text x='{width - 60}' y='{height - 4}' font-size='10' fill='#555'>n={len(pts)}</text>"
        f"</svg>")


def svg_bar_chart(values: dict[str, float], *, title: str, width: int = 320,
                  bar_h: int = 14) -> str:
    """Horizontal bars of ``values`` in [0, 1] (e.g. per-volume scores)."""
    head = f"<div style='font-size:12px'><b>{_h(title)}</b></div>"
    if not values:
        return head + "<div style='color:#888'>no data yet</div>"
    items = list(values.items())[-40:]
    height = bar_h * len(items) + 4
    rows = []
    for i, (k, v) in enumerate(items):
        w = max(0.0, min(1.0, v)) * (width - 140)
        y = 2 + i * bar_h
        rows.append(f"<text x='0' y='{y + bar_h - 3}' font-size='10'>{_h(k)[:14]}</text>"
                    f"<rect x='90' y='{y}' width='{w:.1f}' height='{bar_h - 3}' fill='#2e7d32'/>"
                    f"<text x='{94 + w:.1f}' y='{y + bar_h - 3}' font-size='10'>{v:.3f}</text>")
    mean = sum(values.values()) / len(values)
    return head + f"<svg width='{width}' height='{height}'>{''.join(rows)}</svg>" \
        f"<div style='font-size:11px'>mean {mean:.3f} over {len(values)} volumes</div>"


def grid_table(trials: Iterable[dict[str, Any]], limit: int = 12) -> str:
    """HTML table of hyper-parameter grid points, best first (top ``limit``)."""
    trials = sorted(trials, key=lambda t: -t["value"])
    if not trials:
        return "<div style='font-size:12px'><b>Hyper-parameter grid</b></div>" \
               "<div style='color:#888'>no data yet</div>"
    keys = [k for k in trials[0] if k not in ("name", "value", "n", "final")][:5]
    best = max(t["value"] for t in trials)
    head = "".join(f"<th>{_h(k)}</th>" for k in keys) + "<th>score</th>"
    rows = []
    for t in trials[:limit]:
        style = " style='font-weight:bold;color:#2e7d32'" if t["value"] == best else ""
        cells = "".join(f"<td>{_h(_fmt(t.get(k, '')))}</td>" for k in keys)
        rows.append(f"<tr{style}>{cells}<td>{t['value']:.4f}</td></tr>")
    return (f"<div style='font-size:12px'><b>Hyper-parameter grid</b> "
            f"({len(trials)} points, best first)</div>"
            f"<table style='font-size:11px'><tr>{head}</tr>{''.join(rows)}</table>")


class ChartsPanel:
    """fit_prox objective, hyper-parameter grid, U-Net loss, validation scores."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.objective = W.HTML("")
        self.grid = W.HTML("")
        self.loss = W.HTML("")
        self.scores = W.HTML("")
        self.widget = W.VBox([
            _section("Charts"),
            W.HBox([self.objective, self.loss]),
            W.HBox([self.grid, self.scores]),
        ])
        self.widget.add_class("nx47-charts")

    def render(self, state: ChartState) -> None:
        self.syncer.set(self.objective, value=svg_line_chart(
            state.objective, title="fit_prox objective"))
        self.syncer.set(self.loss, value=svg_line_chart(state.loss, title="U-Net loss"))
        self.syncer.set(self.grid, value=grid_table(state.grid))
        self.syncer.set(self.scores, value=svg_bar_chart(
            state.val_scores, title="validation score per volume"))


# ---------------------------------------------------------------------------
class ResultsPanel:
    """Submission path, GLOBAL_STATS and journal verification."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.html = W.HTML("<i>no result yet</i>")
        self.html.add_class("nx47-results")
        self.widget = W.VBox([_section("Results"), self.html])

    def render(self, state: ResultsState) -> None:
        if state.status is None and not state.stats:
            body = "<i>no result yet</i>"
        else:
            colour = {"ok": "#2e7d32", "cancelled": "#ef6c00"}.get(state.status or "", "#c62828")
            body = (f"<div>status: <b class='nx47-status' data-status='{_h(state.status)}' "
                    f"style='color:{colour}'>{_h(state.status or 'running')}</b>"
                    f" · duration {format_duration(state.duration_s)}</div>"
                    f"<div>submission: <code class='nx47-submission'>"
                    f"{_h(state.submission or '-')}</code></div>")
            v = state.verification
            if v is not None:
                ok = getattr(v, "ok", False)
                txt = (f"journal verified: {getattr(v, 'n_lines', '?')} lines, head "
                       f"{str(getattr(v, 'head', ''))[:16]}") if ok else \
                    (f"journal verification FAILED at line {getattr(v, 'bad_line', '?')}: "
                     f"{getattr(v, 'reason', '')}")
                body += f"<div class='nx47-verify' style='color:{'#2e7d32' if ok else '#c62828'}'>{_h(txt)}</div>"
            if state.stats:
                rows = "".join(
                    f"<tr><td style='padding-right:12px;color:#555'>{_h(k)}</td>"
                    f"<td>{_h(_fmt(v))}</td></tr>" for k, v in state.stats.items())
                body += f"<details open><summary>GLOBAL_STATS</summary><table style='font-size:12px'>{rows}</table></details>"
        self.syncer.set(self.html, value=body)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = str(v)
        return text if len(text) < 160 else text[:157] + "..."
    return str(v)
