"""The QA viewer's camera: which part of a slice the canvas shows, and how big.

Like napari's 2-D camera, the view is a ``center`` (the image point at the
middle of the view, in image pixels: pixel ``(i, j)`` covers ``[j, j + 1) ×
[i, i + 1)``) and a ``scale`` (view pixels per image pixel).  ``zoom`` is the
scale relative to the one that fits the whole slice in the view (1 = fit).
The wheel zooms around the cursor (the image point under it stays put), a drag
pans, a double-click resets.  The camera knows nothing about widgets; the view
(:mod:`nx47_widgets.views.preview`) draws with :meth:`Camera.image_rect`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Camera", "MIN_ZOOM", "MAX_ZOOM", "WHEEL_STEP"]

#: Zoom bounds, relative to the fit (1: the whole slice fills the view).
MIN_ZOOM, MAX_ZOOM = 1.0, 64.0
#: Zoom factor per wheel notch (``deltaY`` of 100).
WHEEL_STEP = 1.25


@dataclass
class Camera:
    """A 2-D camera over an image of ``image_size`` in a view of ``view_size``.

    Parameters
    ----------
    view_size : (float, float)
        Width and height of the view (canvas pixels).
    image_size : (float, float)
        Width and height of the image (pixels).

    Attributes
    ----------
    center : (float, float)
        Image point (x, y) at the middle of the view.
    zoom : float
        Magnification relative to the fit, in [MIN_ZOOM, MAX_ZOOM].
    version : int
        Bumped on every change (the view redraws when it moved).
    """

    view_size: tuple[float, float] = (512.0, 512.0)
    image_size: tuple[float, float] = (1.0, 1.0)
    zoom: float = 1.0
    center: tuple[float, float] | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if self.center is None:
            self.center = (self.image_size[0] / 2, self.image_size[1] / 2)

    # -- geometry ---------------------------------------------------------
    @property
    def fit_scale(self) -> float:
        """View pixels per image pixel at zoom 1 (the whole image in view)."""
        (vw, vh), (iw, ih) = self.view_size, self.image_size
        return min(vw / max(iw, 1e-9), vh / max(ih, 1e-9))

    @property
    def scale(self) -> float:
        """View pixels per image pixel now."""
        return self.fit_scale * self.zoom

    def to_view(self, x: float, y: float) -> tuple[float, float]:
        """The view point of image point ``(x, y)``."""
        s, (cx, cy), (vw, vh) = self.scale, self.center, self.view_size
        return (x - cx) * s + vw / 2, (y - cy) * s + vh / 2

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """The image point under view point ``(x, y)``."""
        s, (cx, cy), (vw, vh) = self.scale, self.center, self.view_size
        return (x - vw / 2) / s + cx, (y - vh / 2) / s + cy

    def image_rect(self) -> tuple[float, float, float, float]:
        """Where the whole image lands in the view: ``(x, y, width, height)``."""
        x0, y0 = self.to_view(0.0, 0.0)
        s = self.scale
        return x0, y0, self.image_size[0] * s, self.image_size[1] * s

    # -- changes ----------------------------------------------------------
    def _clamp_center(self, x: float, y: float) -> tuple[float, float]:
        iw, ih = self.image_size
        return min(max(x, 0.0), float(iw)), min(max(y, 0.0), float(ih))

    def _changed(self) -> None:
        self.version += 1

    def reset(self) -> None:
        """Fit the whole image in the view (double-click)."""
        self.zoom = 1.0
        self.center = (self.image_size[0] / 2, self.image_size[1] / 2)
        self._changed()

    def set_image(self, width: float, height: float) -> bool:
        """A new image; a new size resets the camera (True), the same size
        (the next slice of the volume) keeps it."""
        if (float(width), float(height)) == tuple(map(float, self.image_size)):
            return False
        self.image_size = (float(width), float(height))
        self.reset()
        return True

    def set_view(self, width: float, height: float) -> None:
        """The view was resized: same zoom and centre."""
        if (float(width), float(height)) != tuple(map(float, self.view_size)):
            self.view_size = (float(width), float(height))
            self._changed()

    def zoom_at(self, factor: float, x: float, y: float) -> None:
        """Multiply the zoom by ``factor`` around view point ``(x, y)``: the
        image point under it stays there (the zoom is kept in its bounds)."""
        px, py = self.to_image(x, y)
        zoom = min(max(self.zoom * float(factor), MIN_ZOOM), MAX_ZOOM)
        if zoom == self.zoom:
            return
        self.zoom = zoom
        s, (vw, vh) = self.scale, self.view_size
        self.center = self._clamp_center(px - (x - vw / 2) / s, py - (y - vh / 2) / s)
        self._changed()

    def wheel(self, delta_y: float, x: float, y: float) -> None:
        """A wheel turn at view point ``(x, y)``: up (negative ``delta_y``) zooms in."""
        if delta_y:
            self.zoom_at(WHEEL_STEP ** (-float(delta_y) / 100.0), x, y)

    def set_zoom(self, zoom: float) -> None:
        """Zoom to ``zoom`` around the middle of the view."""
        vw, vh = self.view_size
        self.zoom_at(float(zoom) / self.zoom, vw / 2, vh / 2)

    def pan(self, dx: float, dy: float) -> None:
        """Move the image by ``(dx, dy)`` view pixels (a drag)."""
        if dx or dy:
            s, (cx, cy) = self.scale, self.center
            self.center = self._clamp_center(cx - dx / s, cy - dy / s)
            self._changed()

    def describe(self) -> dict[str, float]:
        """The camera as numbers (the page shows them; tests read them)."""
        cx, cy = self.center
        vw, vh = self.view_size
        return {"zoom": round(self.zoom, 4), "scale": round(self.scale, 5), "cx": round(cx, 3),
                "cy": round(cy, 3), "vw": vw, "vh": vh}

