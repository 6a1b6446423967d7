"""Charts drawn with matplotlib, off the kernel's main thread, at most about once per second.

:func:`snapshot` copies what a :class:`~nx47_widgets.state.charts.ChartState`
holds (under the caller's lock); :func:`chart_figure` draws it — the
fit_prox objective, the U-Net loss, the hyper-parameter grid as a heat map,
the per-volume validation scores worst first — with matplotlib's
object-oriented API on an Agg canvas (no pyplot, no global state); and
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

__all__ = ["ChartSnapshot", "snapshot", "chart_figure", "figure_png", "ChartRenderer"]


@dataclass(frozen=True)
class ChartSnapshot:
    """An immutable copy of the charted series."""

    version: int
    objective: list[tuple[float, float]] = field(default_factory=list)
    loss: list[tuple[float, float]] = field(default_factory=list)
    epoch_loss: list[tuple[float, float]] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)
    val_scores: dict[str, float] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)


def snapshot(state: Any) -> ChartSnapshot:
    """Copy the series of a ChartState (call under the lock that guards it)."""
    return ChartSnapshot(
        version=int(state.version),
        objective=list(state.objective), loss=list(state.loss), epoch_loss=list(state.epoch_loss),
        grid=[dict(c) for c in state.grid], val_scores=dict(state.val_scores),
        empty={s: state.empty_text(s) for s in ("fit_prox", "unet", "search", "validate")},
    )


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="#666", wrap=True,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _line(ax, points, title: str, empty: str, *, log: bool = False, label: str = "") -> None:
    ax.set_title(title, fontsize=9)
    if not points:
        _empty(ax, empty)
        return
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.2, label=label)
    if log and min(ys) > 0:
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _heatmap(ax, grid: list[dict[str, Any]], empty: str) -> None:
    ax.set_title("search: mean score per (l1, l2, thin surface, closing) and threshold", fontsize=9)
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
                                     for r in rows], fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], fontsize=7)
    ax.set_xlabel("high threshold", fontsize=7)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.5 else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.04)


def _bars(ax, scores: dict[str, float], empty: str) -> None:
    ax.set_title("validation score per volume (worst first)", fontsize=9)
    if not scores:
        _empty(ax, empty)
        return
    items = sorted(scores.items(), key=lambda kv: kv[1])
    ax.barh(range(len(items)), [v for _, v in items], color="#4a7bb7")
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=6)
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def chart_figure(snap: ChartSnapshot) -> Figure:
    """The four charts of ``snap`` in one figure (2 x 2)."""
    fig = Figure(figsize=(9.0, 5.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    _line(a, snap.objective, "fit_prox objective per iteration", snap.empty.get("fit_prox", ""), log=True)
    _line(b, snap.loss, "U-Net loss (per batch; epochs in orange)", snap.empty.get("unet", ""))
    if snap.loss and snap.epoch_loss:
        n_per_epoch = max(1.0, snap.loss[-1][0] / max(snap.epoch_loss[-1][0], 1.0))
        b.plot([e * n_per_epoch for e, _ in snap.epoch_loss], [v for _, v in snap.epoch_loss], color="orange",
               marker="o", markersize=3)
    _heatmap(c, snap.grid, snap.empty.get("search", ""))
    _bars(d, snap.val_scores, snap.empty.get("validate", ""))
    return fig


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
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

    def __init__(self, on_png: Callable[[bytes, int], None], *, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_png = on_png
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self.renders = 0
        self.errors = 0
        self._pending: ChartSnapshot | None = None
        self._last_version = -1
        self._last_t = float("-inf")
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="nx47-charts", daemon=True)
        self._thread.start()

    def submit(self, snap: ChartSnapshot) -> None:
        """Queue ``snap`` (replacing any snapshot not rendered yet)."""
        with self._cond:
            if snap.version == self._last_version and self._pending is None:
                return
            self._pending = snap
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
            try:
                png = figure_png(chart_figure(snap))
            except Exception:  # noqa: BLE001 - a chart must never break the dashboard
                self.errors += 1
                continue
            self.renders += 1
            self.on_png(png, snap.version)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)
