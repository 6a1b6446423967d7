"""PNG rendering of volume slices with overlays (label, prediction,
probability, error map), cached, for the slice previewer.

Volumes are decoded once with :func:`nx47_pipeline.volume_io.read_volume`
and kept in a small LRU cache (a 320³ uint8 volume is 33 MB); rendered PNGs
are cached by their full request.  :class:`AsyncRenderer` runs the rendering
on a single worker thread so the kernel never waits for a decode.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from nx47_pipeline.io.volumes import read_volume

__all__ = ["SliceRequest", "render_slice", "AsyncRenderer", "VolumeCache", "OVERLAYS"]

#: Overlay names understood by :func:`render_slice`.
OVERLAYS = ("label", "pred", "prob", "error")

_AXES = {"z": 0, "y": 1, "x": 2}

# RGB colours of the overlays.
LABEL_RGB = (0, 200, 83)  # green: ground-truth surface
PRED_RGB = (41, 121, 255)  # blue: predicted surface
FP_RGB = (255, 23, 68)  # red: predicted, not in the label
FN_RGB = (255, 214, 0)  # yellow: in the label, missed
IGNORE_RGB = (120, 120, 120)


@dataclass(frozen=True)
class SliceRequest:
    """Everything that determines one rendered slice (hashable cache key).

    Parameters
    ----------
    image : str
        CT volume (TIFF).
    axis : {"z", "y", "x"}
        Axis the slice is perpendicular to.
    index : int
        Slice index along ``axis``.
    label, pred, prob : str or None
        Label volume (0/1/2), predicted mask (0/1) and probability volume
        (uint8 0..255); any may be None.
    overlays : tuple of str
        Which of :data:`OVERLAYS` to draw.
    opacity : float
        Overlay opacity in [0, 1].
    min_size : int
        The PNG is upscaled (nearest neighbour) to at least this many pixels
        on its shorter side.
    """

    image: str
    axis: str
    index: int
    label: str | None = None
    pred: str | None = None
    prob: str | None = None
    overlays: tuple[str, ...] = ("label", "pred")
    opacity: float = 0.5
    min_size: int = 256


class VolumeCache:
    """Thread-safe LRU cache of decoded volumes, keyed by path and mtime."""

    def __init__(self, max_volumes: int = 6) -> None:
        self.max_volumes = max_volumes
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, path: str | os.PathLike, *, kind: str = "image") -> np.ndarray:
        p = Path(path)
        key = (str(p), p.stat().st_mtime_ns, kind)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        arr = read_volume(p, kind=kind)
        with self._lock:
            self.loads += 1
            self._data[key] = arr
            while len(self._data) > self.max_volumes:
                self._data.popitem(last=False)
        return arr


_DEFAULT_CACHE = VolumeCache()


def _take(vol: np.ndarray, axis: str, index: int, path: str) -> np.ndarray:
    ax = _AXES[axis]
    n = vol.shape[ax]
    if not 0 <= index < n:
        raise IndexError(f"{path}: slice index {index} outside 0..{n - 1} on axis {axis!r}")
    return np.take(vol, index, axis=ax)


def render_slice(req: SliceRequest, *, cache: VolumeCache | None = None) -> bytes:
    """Render one slice as PNG bytes.

    The CT slice is drawn in grey (contrast stretched to its 1-99
    percentiles); ``label`` draws the surface (label 1) in green and the
    ignore region (label 2) greyed; ``pred`` the predicted mask in blue;
    ``prob`` the probability as a red-to-yellow heat layer; ``error`` false
    positives in red and false negatives in yellow (ignore region excluded).

    Parameters
    ----------
    req : SliceRequest
        What to draw.
    cache : VolumeCache, optional
        Decoded-volume cache (a module-wide one by default).

    Returns
    -------
    bytes
        PNG image.

    Raises
    ------
    ValueError
        If ``req.axis``, ``req.overlays`` or ``req.opacity`` is invalid.
    IndexError
        If ``req.index`` is outside the volume.
    nx47_pipeline.volume_io.VolumeError
        If a volume cannot be read.
    """
    if req.axis not in _AXES:
        raise ValueError(f"axis must be one of {tuple(_AXES)}, got {req.axis!r}")
    bad = [o for o in req.overlays if o not in OVERLAYS]
    if bad:
        raise ValueError(f"overlays must be among {OVERLAYS}, got {bad!r}")
    if not 0.0 <= req.opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {req.opacity!r}")
    cache = cache or _DEFAULT_CACHE
    img = _take(cache.get(req.image), req.axis, req.index, req.image).astype(np.float32)
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    a = float(req.opacity)

    def blend(mask: np.ndarray, colour, alpha) -> None:
        alpha_arr = np.where(mask, alpha, 0.0)[..., None] if np.ndim(alpha) == 0 \
            else (alpha * mask)[..., None]
        rgb[:] = rgb * (1 - alpha_arr) + np.asarray(colour, np.float32) * alpha_arr

    label = pred = None
    if req.label and ("label" in req.overlays or "error" in req.overlays):
        label = _take(cache.get(req.label, kind="label"), req.axis, req.index, req.label)
    if req.pred and ("pred" in req.overlays or "error" in req.overlays):
        pred = _take(cache.get(req.pred), req.axis, req.index, req.pred) != 0
    if "prob" in req.overlays and req.prob:
        prob = _take(cache.get(req.prob), req.axis, req.index, req.prob).astype(np.float32) / 255
        heat = np.stack([np.ones_like(prob), prob, np.zeros_like(prob)], -1) * 255
        alpha = (a * prob)[..., None]
        rgb[:] = rgb * (1 - alpha) + heat * alpha
    if "label" in req.overlays and label is not None:
        blend(label == 2, IGNORE_RGB, a * 0.5)
        blend(label == 1, LABEL_RGB, a)
    if "pred" in req.overlays and pred is not None:
        blend(pred, PRED_RGB, a)
    if "error" in req.overlays and label is not None and pred is not None:
        valid = label != 2
        blend(pred & (label == 0) & valid, FP_RGB, max(a, 0.6))
        blend(~pred & (label == 1) & valid, FN_RGB, max(a, 0.6))
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    short = min(out.size)
    if short and short < req.min_size:
        factor = int(np.ceil(req.min_size / short))
        out = out.resize((out.size[0] * factor, out.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class AsyncRenderer:
    """Render slices on one background thread, newest request wins.

    :meth:`request` returns at once; when the PNG is ready ``on_done(req,
    png)`` is called on the worker thread (``on_error(req, exc)`` on failure).
    A request superseded before it started is skipped.  Results are kept in
    an LRU cache of ``max_pngs`` entries so flipping back is instant.
    """

    def __init__(self, on_done: Callable[[SliceRequest, bytes], None],
                 on_error: Callable[[SliceRequest, BaseException], None] | None = None,
                 *, max_pngs: int = 64, cache: VolumeCache | None = None) -> None:
        self.on_done = on_done
        self.on_error = on_error
        self.cache = cache or VolumeCache()
        self.max_pngs = max_pngs
        self._pngs: collections.OrderedDict[SliceRequest, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._latest: SliceRequest | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nx47-render")
        self.renders = 0

    def cached(self, req: SliceRequest) -> bytes | None:
        with self._lock:
            png = self._pngs.get(req)
            if png is not None:
                self._pngs.move_to_end(req)
            return png

    def request(self, req: SliceRequest) -> concurrent.futures.Future | None:
        """Ask for ``req``; served from the cache synchronously when possible."""
        png = self.cached(req)
        with self._lock:
            self._latest = req
        if png is not None:
            self.on_done(req, png)
            return None
        return self._pool.submit(self._work, req)

    def _work(self, req: SliceRequest) -> None:
        with self._lock:
            if req != self._latest:
                return
        try:
            png = render_slice(req, cache=self.cache)
        except Exception as exc:  # reported to the view, never raised in the kernel
            if self.on_error is not None:
                self.on_error(req, exc)
            return
        with self._lock:
            self.renders += 1
            self._pngs[req] = png
            while len(self._pngs) > self.max_pngs:
                self._pngs.popitem(last=False)
            latest = self._latest
        if req == latest:
            self.on_done(req, png)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
