"""The slice previewer: volume, axis, slice, overlays, opacity and the PNG."""

from __future__ import annotations

import threading

import ipywidgets as W

from nx47_widgets.render import FN_RGB, FP_RGB, IGNORE_RGB, LABEL_RGB, PRED_RGB, AsyncRenderer, SliceRequest
from nx47_widgets.state.preview import AXES, PreviewState
from nx47_widgets.views.base import Syncer, h, section

__all__ = ["PreviewPanel", "legend_html", "available_overlays"]


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
    """For a PREVIEW payload: overlay name -> "" if it applies, else why not."""
    no_label = "no label: test volumes have none"
    no_pred = "no prediction: training volumes are not segmented"
    return {
        "label": "" if p.label_path else no_label,
        "pred": "" if p.pred_path else no_pred,
        "prob": "" if p.prob_path else no_pred,
        "error": "" if (p.label_path and p.pred_path) else
                 ("the error map needs a label and a prediction: " +
                  (no_label if not p.label_path else no_pred)),
    }


class PreviewPanel:
    """Slice previewer: volume, axis, slice, overlays, opacity, PNG image.

    Rendering runs on :class:`~nx47_widgets.render.AsyncRenderer`'s thread;
    user changes to a control stop live following (``state.take_control``).

    Parameters
    ----------
    syncer : Syncer
    state : PreviewState
        The selection this panel shows and changes (see :meth:`bind`).
    lock : threading.RLock, optional
        Shared with the UI pump's flush, so that user changes and event
        batches never interleave.
    """

    def __init__(self, syncer: Syncer, state: PreviewState,
                 lock: threading.RLock | None = None) -> None:
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
        # hidden until the first PNG (an empty image shows a broken-image icon)
        self.image = W.Image(format="png", layout=W.Layout(max_width="512px", display="none"))
        self.image.add_class("nx47-preview-image")
        self.legend = W.HTML(legend_html())
        self.overlay_note = W.HTML("")
        self.overlay_note.add_class("nx47-overlay-note")
        self.info = W.HTML("<i>no volume previewed yet</i>")
        self.info.add_class("nx47-preview-info")
        self.renderer = AsyncRenderer(self._on_png, self._on_error)
        self._updating = False
        self._lock = lock if lock is not None else threading.RLock()
        for w in (self.volume, self.axis, self.index):
            w.observe(self._on_user, names="value")
        for w in (*self.overlays.values(), self.opacity):
            w.observe(self._on_style, names="value")
        self.follow.observe(self._on_follow, names="value")
        controls = W.VBox([
            W.HBox([self.volume, self.follow]), self.axis, self.index,
            W.HBox(list(self.overlays.values()), layout=W.Layout(flex_flow="row wrap")),
            self.overlay_note, self.opacity, self.info, self.legend,
        ])
        self.widget = W.VBox([section("Slice preview"),
                              W.HBox([controls, self.image], layout=W.Layout(flex_flow="row wrap"))])
        self.widget.add_class("nx47-preview")

    def bind(self, state: PreviewState) -> None:
        """Show ``state`` from now on (a new run has a new state)."""
        with self._lock:
            self.state = state

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
        """Copy the selection into the controls and request the slice's PNG."""
        with self._lock:
            st = self.state
            self._updating = True
            try:
                self.syncer.set_options(self.volume, [(k, k) for k in st.order])
                self.syncer.set(self.follow, value=st.follow)
                p = st.current
                if p is None:
                    return
                size = st.axis_size(p, st.axis)
                self.syncer.set(self.volume, value=st.volume)
                self.syncer.set(self.axis, value=st.axis)
                self.syncer.set(self.index, max=max(size - 1, 0))
                self.syncer.set(self.index, value=st.index)
                self._overlay_controls(p)
                score = "" if p.score is None else f" · score {p.score:.3f}"
                self.syncer.set(self.info, value=(
                    f"<span class='nx47-preview-vol'>{h(p.split)} {h(p.volume_id)}</span>"
                    f" {h('x'.join(str(s) for s in p.shape))}{score}"
                    f" · {st.axis}={st.index}"))
            finally:
                self._updating = False
            self.request()

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
            overlays=overlays, opacity=float(self.opacity.value),
        )

    def request(self) -> None:
        """Ask the renderer for the current slice (the newest request wins)."""
        req = self.make_request()
        if req is not None:
            self.renderer.request(req)

    def close(self) -> None:
        """Stop the renderer's thread."""
        self.renderer.close()

    def _on_png(self, req: SliceRequest, png: bytes) -> None:
        self.syncer.set(self.image, value=png)
        self.syncer.set(self.image.layout, display="")

    def _on_error(self, req: SliceRequest, exc: BaseException) -> None:
        self.syncer.set(self.info, value=f"<span style='color:#c62828'>cannot render "
                                         f"{h(req.image)}: {h(exc)}</span>")
