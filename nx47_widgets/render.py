"""PNG rendering of volume slices with overlays (label, prediction,
probability, error map), cached, for the slice previewer.

A run's volumes (TIFF, up to :data:`WHOLE_MAX_VOXELS`) are decoded once with
:func:`nx47_pipeline.io.volumes.read_volume` and kept in a small LRU cache (a
320³ uint8 volume is 33 MB).  Volumes of any size — a zarr array, an OME-Zarr
group (level 0) or a larger TIFF, as ``nx47 infer`` reads and writes them —
are opened lazily with :func:`nx47_pipeline.io.volumes.open_volume` and only
the requested slice is read (every n-th voxel when the slice is longer than
:data:`MAX_SIDE`).  Rendered PNGs are cached by their full request.
:class:`AsyncRenderer` runs the rendering on a single worker thread so the
kernel never waits for a decode.
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

from nx47_pipeline.io.volumes import read_header, read_volume
from nx47_pipeline.io.volumes import open_volume

__all__ = ["SliceRequest", "render_slice", "render_panels", "PANEL_TITLES", "read_slices", "slice_counts", "AsyncRenderer",
           "VolumeCache", "display_step", "is_chunked", "OVERLAYS", "LAYOUTS", "MAX_SIDE",
           "WHOLE_MAX_VOXELS"]

#: Overlay names understood by :func:`render_slice`.
OVERLAYS = ("label", "pred", "prob", "error")
#: ``overlay``: one picture with the overlays on the image; ``side``: image |
#: label | prediction | error side by side (those the volume has).
LAYOUTS = ("overlay", "side")

_AXES = {"z": 0, "y": 1, "x": 2}

#: A TIFF with more voxels than this is read a slice at a time, not whole.
WHOLE_MAX_VOXELS = 512 ** 3
#: Longest side of a slice shown; a longer slice is read every n-th voxel.
MAX_SIDE = 2048

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
        CT volume (TIFF; zarr or OME-Zarr, read a slice at a time).
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
    zoom : float
        Magnification (>= 1): the window shown is the slice's size / zoom.
    center : (float, float)
        Centre of that window, as fractions of the slice's (rows, columns).
    layout : str
        One of :data:`LAYOUTS`.
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
    zoom: float = 1.0
    center: tuple[float, float] = (0.5, 0.5)
    layout: str = "overlay"


def is_chunked(path: str | os.PathLike) -> bool:
    """True for a zarr array or OME-Zarr group (a folder, or a ``.zarr`` path)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() == ".zarr"


def display_step(shape: tuple[int, ...], axis: str, max_side: int = MAX_SIDE) -> int:
    """Every how many voxels a slice of ``shape`` along ``axis`` is read (1 unless
    its longer side exceeds ``max_side``)."""
    ax = _AXES[axis]
    side = max((int(n) for i, n in enumerate(shape) if i != ax), default=1)
    return max(1, -(-side // max(int(max_side), 1)))


class VolumeCache:
    """Thread-safe LRU cache of decoded volumes and of lazily opened ones.

    Parameters
    ----------
    max_volumes : int
        Decoded volumes (and lazy handles) kept.
    whole_max_voxels : int
        A TIFF up to this size is decoded whole (and cached); a larger one,
        like a zarr store, is read a slice at a time.
    max_side : int
        Longest side of a slice read (see :func:`display_step`).

    Attributes
    ----------
    loads : int
        Volumes decoded whole so far.
    slices : int
        Slices read lazily so far.
    """

    def __init__(self, max_volumes: int = 6, *, whole_max_voxels: int = WHOLE_MAX_VOXELS,
                 max_side: int = MAX_SIDE) -> None:
        self.max_volumes = max_volumes
        self.whole_max_voxels = int(whole_max_voxels)
        self.max_side = int(max_side)
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lazy: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.slices = 0

    def get(self, path: str | os.PathLike, *, kind: str = "image") -> np.ndarray:
        """The whole decoded volume (a TIFF), from the cache when possible."""
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

    def lazy(self, path: str | os.PathLike):
        """The lazily opened volume at ``path`` (shape, dtype, slicing), or None
        for a TIFF small enough to be decoded whole."""
        p = Path(path)
        key = (str(p), p.stat().st_mtime_ns)
        with self._lock:
            if key in self._lazy:
                self._lazy.move_to_end(key)
                return self._lazy[key]
        handle = None
        if is_chunked(p) or read_header(p).n_voxels > self.whole_max_voxels:
            handle = open_volume(p)
        with self._lock:
            self._lazy[key] = handle
            while len(self._lazy) > self.max_volumes:
                self._lazy.popitem(last=False)
        return handle

    def take(self, path: str | os.PathLike, axis: str, index: int, *, kind: str = "image") -> np.ndarray:
        """Slice ``index`` along ``axis`` of the volume at ``path``.

        A small TIFF is decoded whole once (cached); any other volume is read
        one slice at a time.  Either way a slice longer than ``max_side`` is
        taken every :func:`display_step`-th voxel.

        Raises
        ------
        IndexError
            If ``index`` is outside the volume.
        """
        vol = self.lazy(path)
        whole = self.get(path, kind=kind) if vol is None else None
        shape = tuple((vol if whole is None else whole).shape)
        step = slice(None, None, display_step(shape, axis, self.max_side))
        if whole is not None:
            return _take(whole, axis, index, str(path))[step, step]
        ax = _AXES[axis]
        n = int(vol.shape[ax])
        if not 0 <= index < n:
            raise IndexError(f"{path}: slice index {index} outside 0..{n - 1} on axis {axis!r}")
        sel = [step, step, step]
        sel[ax] = int(index)
        out = np.asarray(vol[tuple(sel)])
        with self._lock:
            self.slices += 1
        return out


_DEFAULT_CACHE = VolumeCache()


def _take(vol: np.ndarray, axis: str, index: int, path: str) -> np.ndarray:
    ax = _AXES[axis]
    n = vol.shape[ax]
    if not 0 <= index < n:
        raise IndexError(f"{path}: slice index {index} outside 0..{n - 1} on axis {axis!r}")
    return np.take(vol, index, axis=ax)


def _window(shape: tuple[int, ...], zoom: float, center: tuple[float, float]) -> tuple[slice, slice]:
    """Rows and columns of the zoomed window around ``center``."""
    out = []
    for n, c in zip(shape[:2], center):
        size = max(1, int(round(n / max(zoom, 1.0))))
        start = int(round(min(max(c, 0.0), 1.0) * n - size / 2))
        start = min(max(start, 0), n - size)
        out.append(slice(start, start + size))
    return out[0], out[1]


def read_slices(req: SliceRequest, cache: VolumeCache | None = None, need_label: bool = True,
                need_pred: bool = True, need_prob: bool = True):
    """The slice of the image, label, prediction and probability of ``req``.

    Parameters
    ----------
    req : SliceRequest
    cache : VolumeCache, optional
        Decoded-volume cache (a module-wide one by default).
    need_label, need_pred, need_prob : bool
        Read that volume's slice (when the request has the volume).

    Returns
    -------
    tuple
        ``(image, label, pred, prob)``: float32 image, label values, boolean
        prediction, probability in [0, 1]; None where not read.
    """
    cache = cache or _DEFAULT_CACHE
    img = cache.take(req.image, req.axis, req.index).astype(np.float32)
    label = pred = prob = None
    if req.label and need_label:
        label = cache.take(req.label, req.axis, req.index, kind="label")
    if req.pred and need_pred:
        pred = cache.take(req.pred, req.axis, req.index) != 0
    if req.prob and need_prob:
        prob = cache.take(req.prob, req.axis, req.index).astype(np.float32) / 255
    return img, label, pred, prob


def _compose(grey: np.ndarray, label, pred, prob, overlays: tuple[str, ...], a: float) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1)

    def blend(mask: np.ndarray, colour, alpha) -> None:
        alpha_arr = np.where(mask, alpha, 0.0)[..., None]
        rgb[:] = rgb * (1 - alpha_arr) + np.asarray(colour, np.float32) * alpha_arr

    if "prob" in overlays and prob is not None:
        heat = np.stack([np.ones_like(prob), prob, np.zeros_like(prob)], -1) * 255
        alpha = (a * prob)[..., None]
        rgb[:] = rgb * (1 - alpha) + heat * alpha
    if "label" in overlays and label is not None:
        blend(label == 2, IGNORE_RGB, a * 0.5)
        blend(label == 1, LABEL_RGB, a)
    if "pred" in overlays and pred is not None:
        blend(pred, PRED_RGB, a)
    if "error" in overlays and label is not None and pred is not None:
        valid = label != 2
        blend(pred & (label == 0) & valid, FP_RGB, max(a, 0.6))
        blend(~pred & (label == 1) & valid, FN_RGB, max(a, 0.6))
    return rgb


def _check_request(req: "SliceRequest") -> None:
    """Refuse a request whose axis, overlays, opacity or layout is not one the viewer knows."""
    if req.axis not in _AXES:
        raise ValueError(f"axis must be one of {tuple(_AXES)}, got {req.axis!r}")
    bad = [o for o in req.overlays if o not in OVERLAYS]
    if bad:
        raise ValueError(f"overlays must be among {OVERLAYS}, got {bad!r}")
    if not 0.0 <= req.opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {req.opacity!r}")
    if req.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {req.layout!r}")


def _slices(req: "SliceRequest", cache: "VolumeCache | None"):
    """``(side, grey, label, pred, prob)``: whether the layout is side by side, the image slice
    scaled to 0..255 between its 1st and 99th percentiles, and the slices the request needs."""
    side = req.layout == "side"
    want = set(OVERLAYS) if side else set(req.overlays)
    img, label, pred, prob = read_slices(req, cache or _DEFAULT_CACHE, bool({"label", "error"} & want),
                                         bool({"pred", "error"} & want), "prob" in want)
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return side, grey, label, pred, prob


def render_slice(req: SliceRequest, *, cache: VolumeCache | None = None) -> bytes:
    """Render one slice as PNG bytes.

    The CT slice is drawn in grey (contrast stretched to its 1-99
    percentiles); ``label`` draws the surface (label 1) in green and the
    ignore region (label 2) greyed; ``pred`` the predicted mask in blue;
    ``prob`` the probability as a red-to-yellow heat layer; ``error`` false
    positives in red and false negatives in yellow (ignore region excluded).
    ``zoom`` and ``center`` crop a window; the ``side`` layout draws image |
    label | prediction | error next to each other (those the request has).

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
        If ``req.axis``, ``req.overlays``, ``req.opacity``, ``req.zoom`` or
        ``req.layout`` is invalid.
    IndexError
        If ``req.index`` is outside the volume.
    nx47_pipeline.io.volumes.VolumeError
        If a volume cannot be read.
    """
    _check_request(req)
    if not req.zoom >= 1.0:
        raise ValueError(f"zoom must be >= 1, got {req.zoom!r}")
    side, grey, label, pred, prob = _slices(req, cache)
    rows, cols = _window(grey.shape, req.zoom, req.center)
    crop = [None if x is None else x[rows, cols] for x in (grey, label, pred, prob)]
    grey, label, pred, prob = crop
    a = float(req.opacity)
    if side:
        tiles = [_compose(grey, None, None, None, (), a)]
        if label is not None:
            tiles.append(_compose(grey, label, None, None, ("label",), max(a, 0.5)))
        if pred is not None:
            tiles.append(_compose(grey, None, pred, None, ("pred",), max(a, 0.5)))
        if label is not None and pred is not None:
            tiles.append(_compose(grey, label, pred, None, ("error",), max(a, 0.5)))
        gap = np.full((grey.shape[0], 4, 3), 255.0, np.float32)
        parts = []
        for t in tiles:
            parts.extend([t, gap])
        rgb = np.concatenate(parts[:-1], axis=1)
    else:
        rgb = _compose(grey, label, pred, prob, req.overlays, a)
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    short = min(out.size) if not side else grey.shape[0]
    if short and short < req.min_size:
        factor = int(np.ceil(req.min_size / short))
        out = out.resize((out.size[0] * factor, out.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


#: Titles of the side-by-side panels (:func:`render_panels`).
PANEL_TITLES = {"image": "image", "label": "label", "pred": "prediction", "error": "error map"}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(buf, format="PNG",
                                                                       compress_level=1)
    return buf.getvalue()


def render_panels(req: SliceRequest, *, cache: VolumeCache | None = None) -> list[tuple[str, bytes]]:
    """The whole slice of ``req`` as PNGs at one pixel per voxel, one per panel.

    The QA canvas zooms and pans in the browser (its camera), so only the
    slice travels: ``req.zoom``, ``req.center`` and ``req.min_size`` are not
    used.  The ``overlay`` layout gives one panel (the overlays on the image),
    ``side`` one panel per layer the volume has: image, label, prediction,
    error map (titles in :data:`PANEL_TITLES`).

    Parameters
    ----------
    req : SliceRequest
    cache : VolumeCache, optional

    Returns
    -------
    list of (str, bytes)
        ``(title, png)`` per panel, left to right.

    Raises
    ------
    ValueError, IndexError, nx47_pipeline.io.volumes.VolumeError
        As :func:`render_slice`.
    """
    _check_request(req)
    side, grey, label, pred, prob = _slices(req, cache)
    a = float(req.opacity)
    if not side:
        have = {"label": label is not None, "pred": pred is not None, "prob": prob is not None,
                "error": label is not None and pred is not None}
        names = [{"prob": "probability"}.get(o, PANEL_TITLES.get(o, o)) for o in OVERLAYS
                 if o in req.overlays and have[o]]
        title = " + ".join(["image", *names])
        return [(title, _png(_compose(grey, label, pred, prob, req.overlays, a)))]
    panels = [(PANEL_TITLES["image"], _png(_compose(grey, None, None, None, (), a)))]
    if label is not None:
        panels.append((PANEL_TITLES["label"], _png(_compose(grey, label, None, None, ("label",), max(a, 0.5)))))
    if pred is not None:
        panels.append((PANEL_TITLES["pred"], _png(_compose(grey, None, pred, None, ("pred",), max(a, 0.5)))))
    if label is not None and pred is not None:
        panels.append((PANEL_TITLES["error"], _png(_compose(grey, label, pred, None, ("error",), max(a, 0.5)))))
    return panels


def slice_counts(req: SliceRequest, *, cache: VolumeCache | None = None) -> dict[str, int]:
    """False positives, false negatives and true positives of the whole slice.

    The ignore region (label 2) is left out.  Empty when the request has no
    label or no prediction.

    Parameters
    ----------
    req : SliceRequest
    cache : VolumeCache, optional

    Returns
    -------
    dict
        ``fp``, ``fn``, ``tp`` (voxel counts in the slice).
    """
    if not (req.label and req.pred):
        return {}
    cache = cache or _DEFAULT_CACHE
    label = cache.take(req.label, req.axis, req.index, kind="label")
    pred = cache.take(req.pred, req.axis, req.index) != 0
    valid = label != 2
    return {"fp": int(np.count_nonzero(pred & (label == 0) & valid)),
            "fn": int(np.count_nonzero(~pred & (label == 1) & valid)),
            "tp": int(np.count_nonzero(pred & (label == 1)))}


class AsyncRenderer:
    """Render slices on one background thread, newest request wins.

    :meth:`request` returns at once; when the PNG is ready ``on_done(req,
    png)`` is called (``render``: what a request becomes, by default
    :func:`render_slice`'s PNG; :func:`render_panels` gives the panels) on the worker thread (``on_error(req, exc)`` on failure).
    A request superseded before it started is skipped.  Results are kept in
    an LRU cache of ``max_pngs`` entries so flipping back is instant.
    """

    def __init__(self, on_done: Callable[[SliceRequest, bytes], None],
                 on_error: Callable[[SliceRequest, BaseException], None] | None = None,
                 *, max_pngs: int = 64, cache: VolumeCache | None = None,
                 on_counts: Callable[[SliceRequest, dict], None] | None = None,
                 render: Callable[..., object] = render_slice) -> None:
        self.on_done = on_done
        self.render = render
        self.on_counts = on_counts
        self.on_error = on_error
        self.cache = cache or VolumeCache()
        self.max_pngs = max_pngs
        self._pngs: collections.OrderedDict[SliceRequest, bytes] = collections.OrderedDict()
        self._counts: dict[SliceRequest, dict] = {}
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
            if self.on_counts is not None:
                self.on_counts(req, self._counts.get(req, {}))
            return None
        return self._pool.submit(self._work, req)

    def _work(self, req: SliceRequest) -> None:
        with self._lock:
            if req != self._latest:
                return
        try:
            png = self.render(req, cache=self.cache)
            counts = slice_counts(req, cache=self.cache) if self.on_counts is not None else {}
        except Exception as exc:  # reported to the view, never raised in the kernel
            if self.on_error is not None:
                self.on_error(req, exc)
            return
        with self._lock:
            self.renders += 1
            self._pngs[req] = png
            self._counts[req] = counts
            while len(self._pngs) > self.max_pngs:
                old, _ = self._pngs.popitem(last=False)
                self._counts.pop(old, None)
            latest = self._latest
        if req == latest:
            self.on_done(req, png)
            if self.on_counts is not None:
                self.on_counts(req, counts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
