"""Charts drawn with matplotlib, off the kernel's main thread, at most about once per second.

:func:`snapshot` copies what a :class:`~nx47_widgets.state.charts.ChartState`
holds (under the caller's lock); :func:`chart_figure` draws it — the
fit_prox objective, the U-Net loss, the hyper-parameter grid as a heat map,
the per-volume validation scores worst first — with matplotlib's
object-oriented API on an Agg canvas (no pyplot, no global state), at the
size the page shows it (CSS pixels) times the device pixel ratio, with one
point per CSS pixel so that font sizes are CSS pixels; and
:class:`ChartRenderer` turns snapshots into PNGs on one background thread,
newest snapshot wins, no more often than ``min_interval_s``.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nx47_pipeline.model.postprocess import radius_text

__all__ = ["ChartSnapshot", "snapshot", "chart_figure", "figure_png", "ChartRenderer", "chart_height",
           "DEFAULT_WIDTH_PX", "FONT_PX"]

#: The charts' width before the page reported it (CSS pixels).
DEFAULT_WIDTH_PX = 800
#: Height / width of the figure (at least :data:`MIN_HEIGHT_PX`).
ASPECT = 0.66
MIN_HEIGHT_PX = 420
#: Text sizes in CSS pixels (the figure has 72 dpi per device pixel ratio: a point is a CSS pixel).
FONT_PX = {"title": 12, "tick": 11, "cell": 10, "empty": 12}
#: A y axis is logarithmic only when the data spans at least this ratio.
LOG_SPAN = 10.0


def chart_height(width_px: float) -> int:
    """The figure's height (CSS pixels) for a width."""
    return int(max(MIN_HEIGHT_PX, round(width_px * ASPECT)))


@dataclass(frozen=True)
class ChartSnapshot:
    """An immutable copy of the charted series."""

    version: int
    objective: list[tuple[float, float]] = field(default_factory=list)
    loss: list[tuple[float, float]] = field(default_factory=list)
    epoch_loss: list[tuple[float, float]] = field(default_factory=list)
    loss_title: str = "U-Net"
    grid: list[dict[str, Any]] = field(default_factory=list)
    val_scores: dict[str, float] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)


def snapshot(state: Any) -> ChartSnapshot:
    """Copy the series of a ChartState (call under the lock that guards it)."""
    return ChartSnapshot(
        version=int(state.version),
        objective=list(state.objective), loss=list(state.loss), epoch_loss=list(state.epoch_loss),
        loss_title=state.loss_title, grid=[dict(c) for c in state.grid], val_scores=dict(state.val_scores),
        empty={s: state.empty_text(s) for s in ("fit_prox", "search", "validate")}
        | {"loss": state.empty_text(state.loss_stage)},
    )


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=FONT_PX["empty"], color="#666",
            wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _fit_axis(lo: float, hi: float, *, pad: float = 0.08) -> tuple[float, float]:
    """Limits around ``[lo, hi]`` with a margin; a single value gets ±10 % (or ±1)."""
    if hi > lo:
        m = (hi - lo) * pad
        return lo - m, hi + m
    m = abs(lo) * 0.1 or 1.0
    return lo - m, hi + m


def _line(ax, points, title: str, empty: str, *, log: bool = False, label: str = "") -> None:
    """A series; ``log``: a log y axis when the values are positive and span
    :data:`LOG_SPAN` or more (else linear, limits fitted to the data)."""
    ax.set_title(title, fontsize=FONT_PX["title"])
    if not points:
        _empty(ax, empty)
        return
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=4, linewidth=1.4, label=label)
    lo, hi = min(ys), max(ys)
    if log and lo > 0 and hi / lo >= LOG_SPAN:
        ax.set_yscale("log")
    else:
        ax.set_ylim(*_fit_axis(float(lo), float(hi)))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    if len(points) == 1:  # one point: an axis around it, and its value written
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
        ax.annotate(f"{ys[0]:.4g}", (xs[0], ys[0]), textcoords="offset points", xytext=(6, 6),
                    fontsize=FONT_PX["tick"])
    ax.tick_params(labelsize=FONT_PX["tick"])
    ax.grid(alpha=0.3)


def _heatmap(ax, grid: list[dict[str, Any]], empty: str) -> None:
    ax.set_title("search: mean score per (l1, l2, thin, closing) × threshold", fontsize=FONT_PX["title"])
    cells = [c for c in grid if "high" in c]
    if not cells:
        _empty(ax, empty)
        return

    def row_of(c: dict[str, Any]) -> tuple:
        radius = c.get("closing_radius")
        return (c.get("l1"), c.get("l2"), bool(c.get("thin")), tuple(radius) if radius is not None else ())

    # one row per (l1, l2) and post-processing: thin-surface extraction and closing radius apart
    rows = sorted({row_of(c) for c in cells}, key=lambda r: (float(r[0] or 0), float(r[1] or 0), r[2], r[3]))
    several_radii = len({r[3] for r in rows}) > 1
    cols = sorted({c.get("high") for c in cells}, key=float)
    values = [[float("nan")] * len(cols) for _ in rows]
    for c in cells:
        values[rows.index(row_of(c))][cols.index(c.get("high"))] = float(c["value"])
    im = ax.imshow(values, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(len(rows)), [f"l1={r[0]:g} l2={r[1]:g}{' thin' if r[2] else ''}"
                                     + (f" closing {radius_text(r[3])}" if several_radii and r[3] else "")
                                     for r in rows], fontsize=FONT_PX["tick"])
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], fontsize=FONT_PX["tick"])
    ax.set_xlabel("high threshold", fontsize=FONT_PX["tick"])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=FONT_PX["cell"],
                        color="white" if v < 0.5 else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.04).ax.tick_params(labelsize=FONT_PX["tick"])


def _bars(ax, scores: dict[str, float], empty: str) -> None:
    """One bar per volume, the worst at the top."""
    ax.set_title("validation score per volume (worst first)", fontsize=FONT_PX["title"])
    if not scores:
        _empty(ax, empty)
        return
    items = sorted(scores.items(), key=lambda kv: kv[1])
    ax.barh(range(len(items)), [v for _, v in items], color="#4a7bb7")
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=FONT_PX["tick"])
    ax.invert_yaxis()  # row 0 (the worst) on top
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=FONT_PX["tick"])
    ax.grid(axis="x", alpha=0.3)


def chart_figure(snap: ChartSnapshot, width_px: float = DEFAULT_WIDTH_PX, dpr: float = 1.0) -> Figure:
    """The four charts of ``snap`` in one figure (2 x 2).

    Parameters
    ----------
    snap : ChartSnapshot
    width_px : float
        Width shown on the page (CSS pixels); the height follows (:func:`chart_height`).
    dpr : float
        Device pixel ratio: the PNG has ``width_px × dpr`` pixels.
    """
    width_px = max(float(width_px), 200.0)
    fig = Figure(figsize=(width_px / 72.0, chart_height(width_px) / 72.0), dpi=72.0 * max(dpr, 0.25),
                 layout="constrained")
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    _line(a, snap.objective, "fit_prox objective per iteration", snap.empty.get("fit_prox", ""), log=True)
    _line(b, snap.loss, f"{snap.loss_title} loss (per batch; epochs in orange)", snap.empty.get("loss", ""))
    if snap.loss and snap.epoch_loss:
        n_per_epoch = max(1.0, snap.loss[-1][0] / max(snap.epoch_loss[-1][0], 1.0))
        b.plot([e * n_per_epoch for e, _ in snap.epoch_loss], [v for _, v in snap.epoch_loss], color="orange",
               marker="o", markersize=3)
    _heatmap(c, snap.grid, snap.empty.get("search", ""))
    _bars(d, snap.val_scores, snap.empty.get("validate", ""))
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG, at its own size and dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


class ChartRenderer:
    """Render snapshots to PNG on one daemon thread: newest wins, at most one
    render per ``min_interval_s``.

    Parameters
    ----------
    on_png : callable
        ``on_png(png_bytes, version)``, called on the render thread.
    min_interval_s : float
        Smallest time between two renders.
    clock : callable
        Monotonic clock (injectable for tests).
    """

    def __init__(self, on_png: Callable[..., None], *, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, with_size: bool = False) -> None:
        self.on_png = on_png
        self.with_size = with_size
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self.renders = 0
        self.errors = 0
        self._pending: ChartSnapshot | None = None
        self._size: tuple[float, float] = (float(DEFAULT_WIDTH_PX), 1.0)
        self._pending_size = self._size
        self._last_version = -1
        self._last_t = float("-inf")
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="nx47-charts", daemon=True)
        self._thread.start()

    def submit(self, snap: ChartSnapshot, size: tuple[float, float] | None = None) -> None:
        """Queue ``snap`` (replacing any snapshot not rendered yet), drawn at
        ``size`` = (CSS width, device pixel ratio) (default: the last size)."""
        with self._cond:
            size = self._pending_size if size is None else (float(size[0]), float(size[1]))
            if snap.version == self._last_version and self._pending is None and size == self._size:
                return
            self._pending, self._pending_size = snap, size
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                wait = self._last_t + self.min_interval_s - self.clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                snap, self._pending = self._pending, None
                self._last_t = self.clock()
                self._last_version = snap.version
                self._size = size = self._pending_size
            try:
                png = figure_png(chart_figure(snap, *size))
            except Exception:  # noqa: BLE001 - a chart must never break the dashboard
                self.errors += 1
                continue
            self.renders += 1
            if self.with_size:
                self.on_png(png, snap.version, size)
            else:
                self.on_png(png, snap.version)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)
