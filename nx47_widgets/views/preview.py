"""The slice previewer and QA viewer: volume (as seen, or worst score first),
axis, slice, overlays or side by side on a canvas zoomed and panned with the
mouse (:mod:`~nx47_widgets.views.canvas`), per-slice error counts,
the selected validation volume's TopoScore by dimension, keyboard shortcuts,
and pass / fail / note marks saved to ``qa.json``."""

from __future__ import annotations

import threading
from typing import Any, Callable

import ipywidgets as W

from nx47_pipeline.io.run_folder import MASK
from nx47_pipeline.telemetry.events import Split

from nx47_widgets.render import (
    FN_RGB,
    FP_RGB,
    IGNORE_RGB,
    LABEL_RGB,
    PRED_RGB,
    AsyncRenderer,
    SliceRequest,
    display_step,
    render_panels,
)
from nx47_widgets.state.preview import AXES, INFER_SPLIT, PreviewState
from nx47_widgets.state.topo import ValidationScores
from nx47_widgets.views.base import Syncer, button, h, section
from nx47_widgets.views.canvas import SliceCanvas
from nx47_widgets.views.qa import QaPanel
from nx47_widgets.views.topo import TopoTable

__all__ = ["PreviewPanel", "legend_html", "available_overlays", "counts_html"]


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def legend_html() -> str:
    """The overlays' colours."""
    items = [(LABEL_RGB, "label: surface"), (IGNORE_RGB, "label: ignored"),
             (PRED_RGB, "prediction"), (FP_RGB, "error: false positive"),
             (FN_RGB, "error: false negative")]
    sw = "".join(f"<span class='sw' style='background:{_rgb(c)}'></span>{h(t)}" for c, t in items)
    heat = ("<span class='sw' style='background:linear-gradient(90deg,rgb(255,0,0),"
            "rgb(255,255,0))'></span>probability 0 → 1")
    return f"<div class='nx47-legend' style='font-size:12px'>{sw}{heat}</div>"


def available_overlays(p) -> dict[str, str]:
    """For a PREVIEW payload (or an infer run's volume): overlay name -> "" if
    it applies, else why not."""
    if p.split == INFER_SPLIT:
        no_label = "no label: an inferred volume has none"
        no_pred = f"no mask yet: nx47 infer writes {MASK} when it ends"
        no_prob = "no probability: nx47 infer keeps threshold classes, not probabilities"
    else:
        no_label = "no label: test volumes have none"
        no_pred = no_prob = "no prediction: training volumes are not segmented"
        if p.pred_path:  # segmented, but its probability map was not kept
            no_prob = "no probability: the run kept no probability map of this volume"
    return {
        "label": "" if p.label_path else no_label,
        "pred": "" if p.pred_path else no_pred,
        "prob": "" if p.prob_path else no_prob,
        "error": "" if (p.label_path and p.pred_path) else
                 ("the error map needs a label and a prediction: " +
                  (no_label if not p.label_path else no_pred)),
    }


def counts_html(counts: dict) -> str:
    """The slice's error counts (``fp``, ``fn``, ``tp``; empty: why there are none)."""
    if not counts:
        text = "<span class='nx47-hint'>error counts need a label and a prediction</span>"
    else:
        text = (f"this slice: <b style='color:rgb{FP_RGB}'>{counts['fp']}</b> false positives · "
                f"<b style='color:#b8860b'>{counts['fn']}</b> false negatives · "
                f"{counts['tp']} true positives")
    return (f"<span data-fp='{counts.get('fp', '')}' "
            f"data-fn='{counts.get('fn', '')}'>{text}</span>")


#: The viewer's keys, as the help line says them.
KEY_HELP = ("keys: ← → slice · ↑ ↓ volume · l label · p prediction · e error map "
            "(when the page has focus outside a text box)")


class PreviewPanel:
    """Slice previewer and QA viewer.

    Rendering runs on :class:`~nx47_widgets.render.AsyncRenderer`'s thread;
    user changes to a control stop live following (``state.take_control``).

    Parameters
    ----------
    syncer : Syncer
    state : PreviewState
        The selection this panel shows and changes (until :meth:`render`
        shows another run).
    lock : threading.RLock, optional
        Shared with the UI pump's flush, so that user changes and event
        batches never interleave.
    scores : ValidationScores, optional
        The run's per-volume validation records: the selected validation
        volume's TopoScore table (none: read only ``<id>.json`` next to its mask).
    on_change : callable, optional
        Called after a user's action changed the selection, to render what
        changed (the dashboard's view registry renders this panel); default:
        this panel redraws itself.
    """

    def __init__(self, syncer: Syncer, state: PreviewState,
                 lock: threading.RLock | None = None, scores: ValidationScores | None = None,
                 on_change: Callable[[], Any] | None = None) -> None:
        self.syncer = syncer
        self.state = state
        self.scores = scores if scores is not None else ValidationScores(state.out_dir)
        self._lock = lock if lock is not None else threading.RLock()
        self._changed = on_change if on_change is not None else self._draw
        self.topo = TopoTable(syncer)
        self.qa = QaPanel(syncer, self._lock)
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
        self.worst_first = W.Checkbox(value=False, description="worst score first", indent=False,
                                      layout=W.Layout(width="auto"))
        self.worst_first.add_class("nx47-worst-first")
        self.layout_mode = W.ToggleButtons(options=[("overlay", "overlay"), ("side by side", "side")],
                                           value="overlay", description="View",
                                           style={"button_width": "90px"})
        self.layout_mode.add_class("nx47-view-mode")
        # the camera's zoom (1 = the slice fits); the wheel, a drag and a
        # double-click on the picture change the same camera
        self.zoom = W.FloatLogSlider(value=1.0, base=2, min=0, max=6, step=0.25, description="Zoom",
                                     continuous_update=False, readout_format=".2f")
        self.zoom.add_class("nx47-zoom")
        self.reset_view = button("reset view", "nx47-reset-view", "fit the slice (double-click)")
        self.view_info = W.HTML("")
        self.view_info.add_class("nx47-view-info")
        self.keys = {
            "prev_slice": button("‹ slice", "nx47-key-prev-slice", "previous slice (←)"),
            "next_slice": button("slice ›", "nx47-key-next-slice", "next slice (→)"),
            "prev_volume": button("‹ volume", "nx47-key-prev-volume", "previous volume (↑)"),
            "next_volume": button("volume ›", "nx47-key-next-volume", "next volume (↓)"),
        }
        # hidden targets of the l / p / e keys
        self.toggles = {name: button(name, f"nx47-key-{name}") for name in ("label", "pred", "error")}
        for b in self.toggles.values():
            b.layout.display = "none"
        self.counts = W.HTML("")
        self.counts.add_class("nx47-slice-counts")
        # hidden until the first picture
        self.canvas = SliceCanvas(on_change=self._on_camera)
        self.canvas.widget.add_class("nx47-preview-image")
        self.legend = W.HTML(legend_html())
        self.overlay_note = W.HTML("")
        self.overlay_note.add_class("nx47-overlay-note")
        self.info = W.HTML("<i>no volume previewed yet</i>")
        self.info.add_class("nx47-preview-info")
        self.renderer = AsyncRenderer(self._on_png, self._on_error, on_counts=self._on_counts,
                                      render=render_panels)
        self._updating = False
        self._zoom_echo = False
        for w in (self.volume, self.axis, self.index):
            w.observe(self._on_user, names="value")
        for w in (*self.overlays.values(), self.opacity, self.layout_mode):
            w.observe(self._on_style, names="value")
        self.zoom.observe(self._on_zoom, names="value")
        self.reset_view.on_click(lambda _b: self.canvas.reset())
        self.follow.observe(self._on_follow, names="value")
        self.worst_first.observe(lambda _c: self._draw(), names="value")
        self.keys["prev_slice"].on_click(lambda _b: self._act(lambda: self.state.step_slice(-1)))
        self.keys["next_slice"].on_click(lambda _b: self._act(lambda: self.state.step_slice(1)))
        self.keys["prev_volume"].on_click(lambda _b: self._act(lambda: self.state.step_volume(-1, self._order())))
        self.keys["next_volume"].on_click(lambda _b: self._act(lambda: self.state.step_volume(1, self._order())))
        for name, b in self.toggles.items():
            b.on_click(lambda _b, n=name: self._toggle(n))
        # the picture takes the column's width, the controls go under it
        self.widget = W.VBox([section("Slice viewer (QA)"), self.canvas.widget, _controls(self)],
                             layout=W.Layout(width="100%"))
        self.widget.add_class("nx47-preview")

    def _order(self) -> list[str]:
        return self.state.ordered(bool(self.worst_first.value))

    def _act(self, fn) -> None:
        with self._lock:
            fn()
            self._changed()

    def _toggle(self, name: str) -> None:
        cb = self.overlays[name]
        if not cb.disabled:
            cb.value = not cb.value

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
            self._changed()

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
            self._changed()

    # -- state -> widgets ---------------------------------------------------
    def render(self, state: Any) -> None:
        """Show the run ``state`` (a :class:`~nx47_widgets.state.DashboardState`):
        its previews' selection in the controls, its validation records in the
        TopoScore table, and request the slice's PNG.  Another run's state is
        shown from now on (nothing of the last run stays on screen)."""
        with self._lock:
            if state.preview is not self.state or state.scores is not self.scores:
                self.state, self.scores = state.preview, state.scores
                self.topo.render(None)
            self._draw()

    def _draw(self) -> None:
        """Copy the selection into the controls and request the slice's PNG."""
        with self._lock:
            st = self.state
            self._updating = True
            try:
                labels = {k: k + ("" if st.volumes[k].score is None
                                  else f" · {st.volumes[k].score:.3f}") for k in st.order}
                self.syncer.set_options(self.volume, [(labels[k], k) for k in self._order()])
                self.syncer.set(self.follow, value=st.follow)
                p = st.current
                if p is None:  # a new run: nothing of the previous run stays on screen
                    self.syncer.set(self.canvas.widget.layout, display="none")
                    self.syncer.set(self.info, value="<span class='nx47-preview-waiting'>waiting "
                                                     "for this run's first slice</span>")
                    self.syncer.set(self.counts, value="")
                    self.topo.render(None)
                    self.qa.render(st)
                    return
                size = st.axis_size(p, st.axis)
                self.syncer.set(self.volume, value=st.volume)
                self.syncer.set(self.axis, value=st.axis)
                self.syncer.set(self.index, max=max(size - 1, 0))
                self.syncer.set(self.index, value=st.index)
                self._overlay_controls(p)
                score = "" if p.score is None else f" · score {p.score:.3f}"
                step = display_step(tuple(p.shape), st.axis, self.renderer.cache.max_side)
                every = f" · 1 voxel in {step} shown along each side" if step > 1 else ""
                self.syncer.set(self.info, value=(
                    f"<span class='nx47-preview-vol'>{h(p.split)} {h(p.volume_id)}</span>"
                    f" {h('x'.join(str(s) for s in p.shape))}{score}"
                    f" · {st.axis}={st.index}{every}"))
                self._show_topo(p)
                self.qa.render(st)
            finally:
                self._updating = False
            self.request()

    def _show_topo(self, p) -> None:
        """The TopoScore table of a validation volume (hidden for the others)."""
        if p.split != Split.VAL:
            self.topo.render(None)
            return
        self.topo.render(self.scores.breakdown(p.volume_id, self.state.resolve(p.pred_path)))

    def _overlay_controls(self, p) -> None:
        """Offer only the overlays the volume has data for, and say why not."""
        why = available_overlays(p)
        for name, cb in self.overlays.items():
            self.syncer.set(cb, disabled=bool(why[name]), tooltip=why[name] or f"show the {name}")
        missing = sorted({w for w in why.values() if w})
        self.syncer.set(self.overlay_note, value="".join(
            f"<div class='nx47-hint'>{h(w)}</div>" for w in missing))

    def make_request(self) -> SliceRequest | None:
        """The rendering request of the current selection (None: nothing selected)."""
        p = self.state.current
        if p is None:
            return None
        res = self.state.resolve
        overlays = tuple(n for n, cb in self.overlays.items() if cb.value and not cb.disabled)
        return SliceRequest(
            image=str(res(p.image_path)), axis=self.state.axis, index=int(self.state.index),
            label=str(res(p.label_path)) if p.label_path else None,
            pred=str(res(p.pred_path)) if p.pred_path else None,
            prob=str(res(p.prob_path)) if p.prob_path else None,
            overlays=overlays, opacity=float(self.opacity.value), min_size=1,
            layout=self.layout_mode.value,
        )

    def request(self) -> None:
        """Ask the renderer for the current slice (the newest request wins)."""
        req = self.make_request()
        if req is not None:
            self.renderer.request(req)

    def close(self) -> None:
        """Stop the renderer's thread."""
        self.renderer.close()

    def _on_png(self, req: SliceRequest, panels: list[tuple[str, bytes]]) -> None:
        if self.state.current is None:  # rendered for the run shown before
            return
        if panels:  # a PNG's IHDR: width and height, big-endian, at bytes 16..24
            png = panels[0][1]
            self.canvas.show(panels, (int.from_bytes(png[16:20], "big"),
                                      int.from_bytes(png[20:24], "big")))

    @property
    def image(self):
        """The first panel's PNG source (``.value``: the slice's PNG bytes)."""
        return self.canvas.panels[0].source

    def set_width(self, width_px: float, dpr: float = 1.0, window_h: float = 0.0) -> None:
        """The page reports the picture's width (CSS pixels), its pixel ratio
        and the window's height."""
        self.canvas.set_width(width_px, dpr, window_h)

    def _on_zoom(self, change: dict) -> None:
        if not self._zoom_echo:
            self.canvas.set_zoom(float(change["new"]))

    def _on_camera(self) -> None:
        cam = self.canvas.camera
        d = cam.describe()
        attrs = " ".join(f"data-{k}='{v}'" for k, v in d.items())
        self.syncer.set(self.view_info, value=(
            f"<span class='nx47-camera' {attrs}>zoom {cam.zoom:.2f}× · wheel zooms around the "
            f"cursor, drag pans, double-click fits</span>"))
        self._zoom_echo = True  # the slider follows the camera without zooming it again
        try:
            self.syncer.set(self.zoom, value=min(max(cam.zoom, 1.0), 64.0))
        finally:
            self._zoom_echo = False

    def _on_counts(self, req: SliceRequest, counts: dict) -> None:
        self.syncer.set(self.counts, value=counts_html(counts))

    def _on_error(self, req: SliceRequest, exc: BaseException) -> None:
        self.syncer.set(self.info, value=f"<span style='color:#c62828'>cannot render "
                                         f"{h(req.image)}: {h(exc)}</span>")


def _row(*ws: W.Widget) -> W.HBox:
    return W.HBox(list(ws), layout=W.Layout(flex_flow="row wrap", align_items="center"))


def _controls(p: PreviewPanel) -> W.VBox:
    """The viewer's controls, under its picture."""
    return W.VBox([
        _row(p.volume, p.follow, p.worst_first),
        _row(p.keys["prev_volume"], p.keys["next_volume"], p.keys["prev_slice"],
             p.keys["next_slice"], *p.toggles.values()),
        p.axis, p.index,
        _row(*p.overlays.values()), p.overlay_note, p.layout_mode, p.opacity,
        _row(p.zoom, p.reset_view), p.view_info, p.info, p.topo.widget,
        p.counts, p.legend,
        _row(p.qa.mark_pass, p.qa.mark_fail, p.qa.note), p.qa.mark_info,
        W.HTML(f"<div class='nx47-hint'>{KEY_HELP}</div>"),
    ])
