"""The QA viewer's canvas: the slice drawn in the browser, zoomed and panned
with the mouse.

One panel per picture (overlay: one; side by side: image | label |
prediction | error map, two per row when the column is wide enough, each at
least :data:`MIN_PANEL_PX` wide, each with its title), all sharing one
:class:`~nx47_widgets.state.camera.Camera`.  The slice travels once as PNG
bytes (one pixel per voxel) into an ``ipywidgets.Image`` that each
``ipycanvas.Canvas`` draws from, scaled by the camera with image smoothing
off and ``image-rendering: pixelated``: zooming and panning send a few
bytes of drawing commands, never pixels.  Pointer events come from
``ipyevents``: wheel zooms around the cursor, drag pans, double-click resets.

A canvas is drawn on only once its page said it is ready (ipycanvas's
``client_ready``): under Voila the notebook runs before the page connects,
and a drawing command sent then reaches ipycanvas 0.14's front end before the
canvas exists and leaves it blank for good.

Without ipycanvas and ipyevents (the ``dashboard`` extra; a Kaggle image
lacks them) each panel shows its PNG as an image, whole, without the mouse.
"""

from __future__ import annotations

import threading
from typing import Callable

import ipywidgets as W

try:  # the dashboard extra; an environment without them (a bare Kaggle image) shows the PNGs
    from ipycanvas import Canvas, hold_canvas
    from ipyevents import Event
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    Canvas = hold_canvas = Event = None

from nx47_widgets.state.camera import Camera
from nx47_widgets.views.base import h

__all__ = ["SliceCanvas", "MIN_PANEL_PX", "DEFAULT_WIDTH_PX", "panel_columns", "HAS_CANVAS"]

#: ipycanvas and ipyevents are installed: the picture zooms and pans.
HAS_CANVAS = Canvas is not None

#: Narrowest side-by-side panel (CSS pixels).
MIN_PANEL_PX = 300
#: The panels' width before the page reported it (Jupyter, tests).
DEFAULT_WIDTH_PX = 900
#: Gap between panels (CSS pixels).
GAP_PX = 8
#: The tallest view, as a multiple of its width (a very flat or tall slice).
MAX_ASPECT = 1.25
#: The panels together are at most this part of the window's height (each at
#: least MIN_PANEL_PX tall): the whole picture can be seen without scrolling.
WINDOW_SHARE = 0.8
#: Background of the view around the image.
BACKGROUND = "#202020"


def panel_columns(n_panels: int, width: float) -> int:
    """Panels per row for ``n_panels`` in ``width`` CSS pixels: one, or two when
    each still gets :data:`MIN_PANEL_PX`."""
    if n_panels <= 1:
        return 1
    return 2 if (width - GAP_PX) / 2 >= MIN_PANEL_PX else 1


class _Panel:
    """One titled canvas, its PNG source and its pointer events."""

    def __init__(self, owner: "SliceCanvas", index: int) -> None:
        self.source = W.Image(format="png")
        self.title = W.HTML("")
        self.title.add_class("nx47-qa-title")
        self.ready = False  # the page's canvas exists (client_ready): drawing may start
        if not HAS_CANVAS:  # the PNG itself, whole
            self.canvas = None
            self.source.layout = W.Layout(width="100%", height="auto")
            self.source.add_class("nx47-qa-image")
            self.widget = W.VBox([self.title, self.source], layout=W.Layout(min_width="0"))
            self.widget.add_class("nx47-qa-panel")
            return
        self.canvas = Canvas(width=512, height=512, layout=W.Layout(width="100%", height="auto"))
        self.canvas.add_class("nx47-qa-canvas")
        self.canvas.on_client_ready(lambda: owner.client_ready(self))
        # clicks, wheel and double-click at once; moves throttled (a drag sends ~30 per second)
        self.events = Event(source=self.canvas, watched_events=["wheel", "mousedown", "mouseup",
                                                                "dblclick", "mouseleave"],
                            prevent_default_action=True)
        self.moves = Event(source=self.canvas, watched_events=["mousemove"],
                           throttle_or_debounce="throttle", wait=30)
        self.events.on_dom_event(lambda e: owner.on_pointer(e))
        self.moves.on_dom_event(lambda e: owner.on_pointer(e))
        self.widget = W.VBox([self.title, self.canvas], layout=W.Layout(min_width="0"))
        self.widget.add_class("nx47-qa-panel")
        self.widget.add_class(f"nx47-qa-panel-{index}")


class SliceCanvas:
    """The panels of the QA viewer and their shared camera.

    Parameters
    ----------
    on_change : callable, optional
        Called (no argument) after the camera moved (the viewer shows the zoom).
    max_panels : int
        Most panels shown at once.

    Attributes
    ----------
    camera : Camera
    widget : ipywidgets.Box
        The grid of panels (CSS class ``nx47-qa-panels``); hidden until the
        first picture.
    draws : int
        Redraws so far (tests read it).
    """

    def __init__(self, on_change: Callable[[], None] | None = None, max_panels: int = 4) -> None:
        self.camera = Camera()
        self.on_change = on_change
        self.panels = [_Panel(self, i) for i in range(max_panels)]
        self.n_shown = 0
        self.width_px = float(DEFAULT_WIDTH_PX)
        self.dpr = 1.0
        self.window_h = 0.0  # unknown: the panels are as tall as the slice's aspect makes them
        self.draws = 0
        self._drag: tuple[float, float] | None = None
        self._lock = threading.RLock()
        self.widget = W.GridBox([p.widget for p in self.panels], layout=W.Layout(
            width="100%", grid_gap=f"{GAP_PX}px", grid_template_columns="1fr", display="none"))
        self.widget.add_class("nx47-qa-panels")
        for p in self.panels:
            p.widget.layout.display = "none"

    # -- pictures ---------------------------------------------------------
    def show(self, panels: list[tuple[str, bytes]], size: tuple[int, int]) -> None:
        """Show ``panels`` (``(title, png)``, one pixel per voxel, all of
        ``size`` = (width, height)); the camera stays unless the size changed."""
        with self._lock:
            panels = panels[:len(self.panels)]
            for p, (title, png) in zip(self.panels, panels):
                p.title.value = f"<b>{h(title)}</b>"
                p.source.value = png
            self.camera.set_image(*size)
            if len(panels) != self.n_shown:
                self.n_shown = len(panels)
                for i, p in enumerate(self.panels):
                    p.widget.layout.display = "" if i < self.n_shown else "none"
            self.widget.layout.display = ""
            self._layout()
            self.redraw()

    def set_width(self, width_px: float, dpr: float = 1.0, window_h: float = 0.0) -> None:
        """The page says how wide the panels' box is (CSS pixels), its device
        pixel ratio and the window's height: the canvases get as many pixels
        as they show."""
        with self._lock:
            if width_px > 0 and (abs(width_px - self.width_px) >= 1 or dpr != self.dpr
                                 or abs(window_h - self.window_h) >= 1):
                self.width_px, self.dpr, self.window_h = float(width_px), float(dpr or 1.0), float(window_h)
                self._layout()
                self.redraw()

    def panel_css_size(self) -> tuple[float, float]:
        """Width and height of one panel's canvas on the page (CSS pixels)."""
        cols = panel_columns(self.n_shown, self.width_px)
        w = (self.width_px - GAP_PX * (cols - 1)) / cols
        iw, ih = self.camera.image_size
        height = w * min(ih / max(iw, 1e-9), MAX_ASPECT)
        if self.window_h > 0:
            rows = -(-max(self.n_shown, 1) // cols)
            height = min(height, max(float(MIN_PANEL_PX), WINDOW_SHARE * self.window_h / rows - 24))
        return w, height

    def _layout(self) -> None:
        cols = panel_columns(self.n_shown, self.width_px)
        self.widget.layout.grid_template_columns = " ".join(["minmax(0, 1fr)"] * cols)
        w, hgt = self.panel_css_size()
        cw, ch = max(1, round(w * self.dpr)), max(1, round(hgt * self.dpr))
        if not HAS_CANVAS:
            self.camera.set_view(cw, ch)
            return
        for p in self.panels[:self.n_shown]:
            if (p.canvas.width, p.canvas.height) != (cw, ch):
                p.canvas.width, p.canvas.height = cw, ch
        self.camera.set_view(cw, ch)

    # -- drawing ----------------------------------------------------------
    def client_ready(self, panel: _Panel) -> None:
        """The page created ``panel``'s canvas (again, after a reconnection): draw it."""
        with self._lock:
            panel.ready = True
        self.redraw()

    def redraw(self) -> None:
        """Draw every shown panel with the camera (commands only: the PNGs
        are already in the page)."""
        with self._lock:
            ready = [p for p in self.panels[:self.n_shown] if p.ready]
            if not ready:
                if self.on_change is not None:
                    self.on_change()
                return
            x, y, w, hgt = self.camera.image_rect()
            with hold_canvas():
                for p in ready:
                    c = p.canvas
                    c.image_smoothing_enabled = False  # nearest neighbour: crisp voxels
                    c.fill_style = BACKGROUND
                    c.fill_rect(0, 0, c.width, c.height)
                    c.draw_image(p.source, x, y, w, hgt)
            self.draws += 1
        if self.on_change is not None:
            self.on_change()

    # -- pointer ----------------------------------------------------------
    def _view_point(self, e: dict) -> tuple[float, float] | None:
        """The event's position in canvas pixels (the canvas may be shown
        at another size than its pixels)."""
        try:
            rw, rh = float(e["boundingRectWidth"]), float(e["boundingRectHeight"])
            x, y = float(e["relativeX"]), float(e["relativeY"])
        except (KeyError, TypeError, ValueError):
            return None
        if rw <= 0 or rh <= 0:
            return None
        vw, vh = self.camera.view_size
        return x * vw / rw, y * vh / rh

    def on_pointer(self, e: dict) -> None:
        """Wheel: zoom around the cursor; drag: pan; double-click: reset."""
        kind = e.get("type")
        pt = self._view_point(e)
        with self._lock:
            if kind == "dblclick":
                self._drag = None
                self.camera.reset()
            elif pt is None:
                return
            elif kind == "wheel":
                self.camera.wheel(float(e.get("deltaY") or 0.0) * (16.0 if e.get("deltaMode") == 1 else 1.0),
                                  *pt)
            elif kind == "mousedown" and int(e.get("button") or 0) == 0:
                self._drag = pt
                return
            elif kind in ("mousemove", "mouseup", "mouseleave") and self._drag is not None:
                if kind == "mousemove" and not int(e.get("buttons") or 0) & 1:
                    self._drag = None
                    return
                x0, y0 = self._drag
                self.camera.pan(pt[0] - x0, pt[1] - y0)
                self._drag = None if kind != "mousemove" else pt
            else:
                return
            self.redraw()

    def reset(self) -> None:
        """Fit the slice in the view again."""
        with self._lock:
            self.camera.reset()
            self.redraw()

    def set_zoom(self, zoom: float) -> None:
        """Zoom to ``zoom`` (relative to the fit) around the middle of the view."""
        with self._lock:
            if abs(zoom - self.camera.zoom) > 1e-9:
                self.camera.set_zoom(zoom)
                self.redraw()
