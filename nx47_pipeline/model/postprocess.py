"""From probabilities to a binary surface mask, and the cheap budget fallback.

``postprocess``: hysteresis thresholds (weak voxels kept only when
26-connected to a strong one) -> with ``thin``, thin-surface extraction
(non-maximum suppression along the sheet normal; the run chooses it on
validation) -> anisotropic closing (fills pinholes and thin gaps, never
removes a voxel) -> cavity filling -> removal of 26-connected components
smaller than ``min_size`` voxels -> hole plugging (the fills of a closing
one voxel wider than the chain's, kept where their 26-connected component
has at most ``plug_size`` voxels).  The run chooses ``thin``, the closing
radius, ``min_size`` and ``plug_size`` on validation.  The output is a uint8
0/1 mask of exactly the probability's shape, as the submission format
requires.

``fallback_segment`` is what the pipeline runs on the volumes left when the
time budget runs short: smoothed intensity, Otsu threshold, a second
threshold keeping the brighter core of the sheets, the same closing and dust
removal -- about a second or two on a 320^3 volume, no model needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import cc3d
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from nx47_pipeline.model.features import sym3_eigvals


ProgressFn = Callable[[int, int, str], None]


def _check_3d(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D (Z, Y, X), got shape {arr.shape}")
    return arr


def _check_radius(radius: Sequence[int], name: str = "closing_radius") -> tuple[int, int, int]:
    try:
        r = tuple(int(v) for v in radius)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 integers >= 0, got {radius!r}") from None
    if len(r) != 3 or any(v < 0 for v in r) or any(isinstance(v, bool) or int(v) != v for v in radius):
        raise ValueError(f"{name} must be 3 integers >= 0, got {radius!r}")
    return r  # type: ignore[return-value]


def _check_min_size(min_size: int, name: str = "min_size") -> int:
    try:
        bad = isinstance(min_size, bool) or int(min_size) != min_size or min_size < 0
    except (TypeError, ValueError):
        bad = True
    if bad:
        raise ValueError(f"{name} must be an integer >= 0, got {min_size!r}")
    return int(min_size)


def hysteresis(prob: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """Hysteresis thresholding with 26-connectivity.

    Parameters
    ----------
    prob : ndarray, shape (Z, Y, X)
        Probabilities (or any score).
    low, high : float
        Voxels ``> high`` are strong; voxels ``> low`` are kept when their
        26-connected component of ``> low`` voxels holds a strong voxel.

    Returns
    -------
    ndarray of bool, same shape
    """
    prob = _check_3d("prob", prob)
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise ValueError(f"need finite low <= high, got low={low!r}, high={high!r}")
    weak = prob > low
    if not weak.any():
        return weak
    labels = cc3d.connected_components(weak, connectivity=26)
    strong_labels = np.unique(labels[prob > high])
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    keep[strong_labels] = True
    keep[0] = False
    return keep[labels]


def _structure(radius: tuple[int, int, int], shape: str) -> np.ndarray:
    rz, ry, rx = radius
    if shape == "box":
        return np.ones((2 * rz + 1, 2 * ry + 1, 2 * rx + 1), dtype=bool)
    zz, yy, xx = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    d = np.zeros((2 * rz + 1, 2 * ry + 1, 2 * rx + 1))
    for g, r in ((zz, rz), (yy, ry), (xx, rx)):
        if r > 0:
            d = d + (g / r) ** 2
    return d <= 1.0 + 1e-9


def anisotropic_closing(
    mask: np.ndarray, *, radius: Sequence[int] = (1, 2, 2), shape: str = "box"
) -> np.ndarray:
    """Binary closing with a per-axis radius, exact at the volume borders.

    The mask is padded with background by the radius first, so objects that
    touch a border are not eaten by the erosion: the result always contains
    the input (closing is extensive).

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Binary mask.
    radius : (int, int, int)
        Structuring-element half-size along z, y, x (0 leaves that axis
        alone).
    shape : {"box", "ellipsoid"}
        ``"box"`` is separable and computed as 1-D max / min filters (fast);
        ``"ellipsoid"`` uses ``scipy.ndimage.binary_closing``.

    Returns
    -------
    ndarray of bool, same shape
    """
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    r = _check_radius(radius)
    if shape not in ("box", "ellipsoid"):
        raise ValueError(f"shape must be 'box' or 'ellipsoid', got {shape!r}")
    if not any(r) or not mask.any():
        return mask.copy()
    padded = np.pad(mask, [(v, v) for v in r], mode="constant", constant_values=False)
    if shape == "box":
        work = padded.view(np.uint8)
        for axis, v in enumerate(r):
            if v:
                work = ndimage.maximum_filter1d(work, 2 * v + 1, axis=axis, mode="constant", cval=0)
        for axis, v in enumerate(r):
            if v:
                work = ndimage.minimum_filter1d(work, 2 * v + 1, axis=axis, mode="constant", cval=0)
        closed = work.astype(bool)
    else:
        closed = ndimage.binary_closing(padded, structure=_structure(r, "ellipsoid"), border_value=0)
    crop = tuple(slice(v, v + n) for v, n in zip(r, mask.shape))
    return closed[crop] | mask


def remove_small_components(mask: np.ndarray, *, min_size: int = 100) -> np.ndarray:
    """Drop 26-connected components with fewer than ``min_size`` voxels.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Binary mask.
    min_size : int
        Smallest component size kept.

    Returns
    -------
    ndarray of bool, same shape
    """
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    min_size = _check_min_size(min_size)
    if min_size <= 1 or not mask.any():
        return mask.copy()
    return cc3d.dust(mask, threshold=min_size, connectivity=26, in_place=False).astype(bool, copy=False)


def plug_holes(mask: np.ndarray, *, max_size: int, radius: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """Plug the small holes a closing would fill, not the gaps between sheets.

    The voxels a closing with ``radius`` would add (``closing(mask) &
    ~mask``, :func:`anisotropic_closing`) are grouped in 26-connected
    components and added back where a component has at most ``max_size``
    voxels.  A hole in a sheet gives a small fill and is plugged (its tunnel,
    a Betti-1 feature of the TopoScore, disappears); the fill between two
    nearby sheets runs along them, is large, and is left out, so the sheets
    stay apart.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Binary mask.
    max_size : int
        Largest fill component added back, voxels (>= 0; 0 plugs nothing).
    radius : (int, int, int)
        Half-sizes (z, y, x) of the closing's box (>= 0): holes up to about
        ``2 * radius`` voxels across are candidates.

    Returns
    -------
    ndarray of bool, same shape, a superset of ``mask``
    """
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    max_size = _check_min_size(max_size, "max_size")
    r = _check_radius(radius, "radius")
    if max_size == 0 or not any(r) or not mask.any():
        return mask.copy()
    fill = anisotropic_closing(mask, radius=r)
    fill &= ~mask
    if not fill.any():
        return mask.copy()
    labels, n = cc3d.connected_components(fill, connectivity=26, return_N=True)
    keep = np.bincount(labels.reshape(-1), minlength=int(n) + 1) <= max_size
    keep[0] = False
    return mask | keep[labels]


def plug_radius(closing_radius: Sequence[int]) -> tuple[int, int, int]:
    """The radius :func:`postprocess` plugs holes with: one voxel more than
    ``closing_radius`` along each axis.  A closing with a radius the chain's
    closing already covers adds nothing (the mask is closed under it), so
    the plugs reach the holes the chain's closing left: up to 2 voxels wider
    (e.g. ``(1, 1, 1)`` -> ``(2, 2, 2)``)."""
    return tuple(v + 1 for v in _check_radius(closing_radius))  # type: ignore[return-value]


def postprocess(
    prob: np.ndarray,
    *,
    low: float = 0.35,
    high: float = 0.5,
    closing_radius: Sequence[int] = (1, 2, 2),
    min_size: int = 100,
    thin: bool = False,
    ridge: np.ndarray | None = None,
    plug_size: int = 0,
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """Probabilities to a submission mask.

    Hysteresis (``low``, ``high``) -> with ``thin``, :func:`thin_surface`
    -> :func:`anisotropic_closing` -> :func:`fill_cavities` ->
    :func:`remove_small_components` (``min_size``) -> :func:`plug_holes`
    (``plug_size``, radius :func:`plug_radius` of ``closing_radius``; 0
    plugs nothing), then cavity filling again when a plug added voxels
    (:data:`DEFAULT_STEPS`, plus ``"thin"``; the run chooses ``thin``, the
    closing radius, ``min_size`` and ``plug_size`` on validation, ablations
    in docs/model.md).  ``ridge``: ``surface_ridge(prob, where)`` for a
    ``where`` holding every voxel above ``low``, computed once for several
    pairs (else thinning computes it).  ``on_progress(done, total, step)``
    is called before each step (a few seconds each on a 320^3 volume).

    Returns
    -------
    ndarray of uint8 in {0, 1}, exactly ``prob.shape``
    """
    return postprocess_steps(prob, low=low, high=high, closing_radius=closing_radius, min_size=min_size,
                             plug_size=plug_size, steps=post_steps(thin), ridge=ridge, on_progress=on_progress)


#: Post-processing steps in their order (see :func:`postprocess_steps`);
#: ``thin`` (:func:`thin_surface`) is chosen per run on validation
#: (``postprocess(thin=...)``); ``bridges`` (:func:`cut_bridges`) is an
#: ablation step only: measured on held-out data it did not pay
#: (docs/model.md); ``plug`` (:func:`plug_holes`) does nothing at
#: ``plug_size`` 0.
STEPS = ("hysteresis", "thin", "closing", "fill_holes", "bridges", "dust", "plug")
#: The steps :func:`postprocess` runs without ``thin`` (cavity filling:
#: +0.02 / +0.01 score on held-out data of the two generator variants,
#: docs/model.md).
DEFAULT_STEPS = ("hysteresis", "closing", "fill_holes", "dust", "plug")


def post_steps(thin: bool) -> tuple[str, ...]:
    """The steps of :func:`postprocess`: :data:`DEFAULT_STEPS`, with
    ``"thin"`` after the hysteresis when ``thin``."""
    if not isinstance(thin, (bool, np.bool_)):
        raise ValueError(f"thin must be True or False, got {thin!r}")
    return tuple(s for s in STEPS if s in DEFAULT_STEPS or (thin and s == "thin"))


def fill_cavities(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed cavities (background components that touch no border),
    which the TopoScore counts as spurious Betti-2 features."""
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    if not mask.any():
        return mask.copy()
    # scipy.ndimage.binary_fill_holes (6-connected background) gives the same mask at twice the time
    # on a 320^3 volume (docs/benchmarks.md): label the background once with cc3d, keep what touches a face
    labels = cc3d.connected_components(~mask, connectivity=6)
    outside = np.zeros(int(labels.max()) + 1, dtype=bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(face)] = True
    outside[0] = True  # label 0: the mask itself
    return mask | ~outside[labels]


#: Voxels a chunk needs around it so that :func:`surface_ridge` of its core
#: equals the whole volume's: the Gaussian's radius at ``sigma`` 1 (4), two
#: central differences (2) and the interpolation one voxel along the normal (1).
RIDGE_HALO = 7


def surface_ridge(prob: np.ndarray, where: np.ndarray, *, sigma: float = 1.0,
                  on_step: Callable[[str], None] | None = None) -> np.ndarray:
    """The voxels of ``where`` on the ridge of ``prob`` across the sheet.

    The normal at a voxel is the eigenvector of the eigenvalue of largest
    magnitude of the Hessian of ``prob`` smoothed with ``sigma`` (across a
    sheet the probability curves most: down on the ridge, up on its flanks);
    a voxel is on the ridge when its smoothed
    probability is at least the one a voxel further along the normal on
    either side has (linear interpolation): non-maximum suppression along
    the normal.  A voxel's answer depends on ``prob`` within
    :data:`RIDGE_HALO` voxels only (at ``sigma`` 1), so chunks computed with
    that halo agree with the whole volume.

    Parameters
    ----------
    prob : ndarray, 3D
        Probabilities.
    where : ndarray of bool, same shape
        The voxels to test (the others are False).
    sigma : float
        Smoothing before the Hessian, voxels (> 0).
    on_step : callable, optional
        ``on_step(name)`` as each step begins (smoothing, each row of the
        Hessian, the normals, the suppression): seconds each at 320^3.

    Returns
    -------
    ndarray of bool, ``prob``'s shape, a subset of ``where``
    """
    prob = _check_3d("prob", prob)
    where = _check_3d("where", where).astype(bool, copy=False)
    if where.shape != prob.shape:
        raise ValueError(f"where shape {where.shape} != prob shape {prob.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    out = np.zeros(prob.shape, dtype=bool)
    if not where.any():
        return out
    step = on_step or (lambda name: None)
    step("smoothing")
    p = ndimage.gaussian_filter(prob.astype(np.float32), sigma)
    idx = np.nonzero(where)
    h = {}  # Hessian entries (i, j), i <= j, at the tested voxels
    for i in range(3):
        step(f"Hessian row {i + 1}/3")
        grad = np.gradient(p, axis=i)
        for j in range(i, 3):
            h[i, j] = np.gradient(grad, axis=j)[idx]
        del grad
    step("normals")
    normal = _normal_eigenvector(h[0, 0], h[1, 1], h[2, 2], h[0, 1], h[0, 2], h[1, 2])
    del h
    step("suppression along the normals")
    coords = np.asarray(idx, dtype=np.float32)
    here = p[idx]
    keep = np.ones(here.shape, dtype=bool)
    for side in (1.0, -1.0):
        keep &= here >= ndimage.map_coordinates(p, coords + side * normal, order=1, mode="nearest")
    out[tuple(i[keep] for i in idx)] = True
    return out


def radius_text(radius: Sequence[int]) -> str:
    """A closing radius as people read it in tables and captions: ``(1, 2, 2)`` -> ``"1x2x2"``."""
    return "x".join(str(int(v)) for v in radius)


def _check_width(width: int) -> int:
    if isinstance(width, bool) or int(width) != width or width < 0:
        raise ValueError(f"width must be an integer >= 0, got {width!r}")
    return int(width)


def _normal_eigenvector(a, b, c, d, e, f) -> np.ndarray:
    """Unit eigenvectors, shape (3, n), of the eigenvalue of largest
    magnitude of the symmetric matrices ``[[a, d, e], [d, b, f], [e, f, c]]``
    (1-D arrays): across a sheet the curvature is strongest (negative on the
    ridge, positive on its flanks), along it weak.

    The eigenvalue comes in closed form (:func:`sym3_eigvals`); the vector is
    the largest cross product of two rows of ``H - lambda I`` (orthogonal to
    both, so in its null space).  Where that eigenvalue is repeated every
    cross product vanishes and any vector of the eigenspace would do: the
    result is then the first axis.  About ten times faster than
    ``numpy.linalg.eigh`` on millions of voxels."""
    top, _, bottom = sym3_eigvals(a, b, c, d, e, f)
    lam = np.where(np.abs(bottom) >= np.abs(top), bottom, top)
    del top, bottom
    a, b, c = a - lam, b - lam, c - lam  # the rows of H - lambda I: (a, d, e), (d, b, f), (e, f, c)
    del lam
    # the three cross products of pairs of rows, component by component (np.cross on stacked rows
    # is twice as slow and needs the stacks)
    best = [d * f - e * b, e * d - a * f, a * b - d * d]  # row 0 x row 1
    best_n = best[0] * best[0] + best[1] * best[1] + best[2] * best[2]
    for cand in ([d * c - e * f, e * e - a * c, a * f - d * e],  # row 0 x row 2
                 [b * c - f * f, f * e - d * c, d * f - b * e]):  # row 1 x row 2
        n = cand[0] * cand[0] + cand[1] * cand[1] + cand[2] * cand[2]
        better = n > best_n
        for k in range(3):
            np.copyto(best[k], cand[k], where=better)
        np.copyto(best_n, n, where=better)
    flat = best_n <= np.finfo(np.float32).tiny
    best[0][flat] = 1.0
    best[1][flat] = 0.0
    best[2][flat] = 0.0
    best_n[flat] = 1.0
    norm = np.sqrt(best_n, out=best_n)
    return np.stack([v / norm for v in best])


def thin_mask(mask: np.ndarray, ridge: np.ndarray, *, width: int = 1) -> np.ndarray:
    """``mask & ridge`` dilated ``width`` times (6-connected) inside ``mask``."""
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    width = _check_width(width)
    out = mask & ridge
    if width and out.any():
        out = ndimage.binary_dilation(out, iterations=int(width), mask=mask)
    return out


def thin_surface(prob: np.ndarray, mask: np.ndarray, *, sigma: float = 1.0, width: int = 1,
                 on_step: Callable[[str], None] | None = None) -> np.ndarray:
    """Non-maximum suppression of ``prob`` along the sheet normal, inside ``mask``.

    The ridge of :func:`surface_ridge` within ``mask``, one or two voxels
    thick, dilated ``width`` times inside ``mask`` (:func:`thin_mask`);
    ``on_step`` as in :func:`surface_ridge`.

    Parameters
    ----------
    prob : ndarray, 3D
        Probabilities.
    mask : ndarray of bool, same shape
        The voxels that may be kept (e.g. after hysteresis).
    sigma : float
        Smoothing before the Hessian, voxels (> 0).
    width : int
        Dilations of the ridge inside ``mask`` (>= 0).

    Returns
    -------
    ndarray of bool, ``mask``'s shape, a subset of ``mask``
    """
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    if mask.shape != np.shape(prob):
        raise ValueError(f"mask shape {mask.shape} != prob shape {np.shape(prob)}")
    _check_width(width)
    return thin_mask(mask, surface_ridge(prob, mask, sigma=sigma, on_step=on_step), width=width)


def cut_bridges(mask: np.ndarray, *, depth: float = 1.5, min_part: int = 200) -> np.ndarray:
    """Separate sheets joined by thin bridges (VOI merges).

    The cores of the mask -- voxels farther than ``depth`` from the
    background, 6-connected pieces of at least ``min_part`` voxels -- seed a
    watershed of the distance transform inside the mask; the voxels that
    touch another seed's region (26-neighbourhood) are removed, so the
    regions are apart under the metric's 26-connectivity.

    Parameters
    ----------
    mask : ndarray of bool, 3D
    depth : float
        Distance (voxels) a core voxel is from the background (> 0).
    min_part : int
        Smallest core that seeds its own region (>= 1).

    Returns
    -------
    ndarray of bool, a subset of ``mask``
    """
    mask = _check_3d("mask", mask).astype(bool, copy=False)
    if not depth > 0:
        raise ValueError(f"depth must be > 0, got {depth!r}")
    min_part = _check_min_size(min_part)
    if not mask.any():
        return mask.copy()
    dist = ndimage.distance_transform_edt(mask)
    seeds = cc3d.dust(cc3d.connected_components(dist > depth, connectivity=6), threshold=max(min_part, 1),
                      connectivity=6, in_place=False)
    if seeds.max() < 2:
        return mask.copy()
    regions = watershed(-dist, seeds, mask=mask)
    top = ndimage.maximum_filter(regions, size=3)
    low = ndimage.minimum_filter(np.where(regions > 0, regions, np.iinfo(regions.dtype).max), size=3)
    border = (regions > 0) & ((top != regions) | (low != regions))
    return mask & ~border


def postprocess_steps(
    prob: np.ndarray,
    *,
    low: float,
    high: float,
    closing_radius: Sequence[int] = (1, 2, 2),
    min_size: int = 100,
    steps: Sequence[str] = DEFAULT_STEPS,
    ridge: np.ndarray | None = None,
    plug_size: int = 0,
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """:func:`postprocess` with a chosen subset of :data:`STEPS` (ablations).

    Without ``"hysteresis"`` the mask is ``prob > high``.  ``"thin"`` needs
    the probabilities, so it runs here, right after the thresholds, with
    ``ridge`` when given (see :func:`postprocess`).

    Returns
    -------
    ndarray of uint8 in {0, 1}, shape of ``prob``
    """
    prob = _check_3d("prob", prob)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"steps must be among {STEPS}, got {unknown}")
    tick = _ticker(on_progress, steps)
    tick("hysteresis")
    mask = hysteresis(prob, low=low, high=high) if "hysteresis" in steps else prob > high
    if "thin" in steps:
        tick("thin")
        if ridge is None:
            mask = thin_surface(prob, mask, on_step=lambda name: tick("thin", name))
        else:
            if np.shape(ridge) != prob.shape:
                raise ValueError(f"ridge shape {np.shape(ridge)} != prob shape {prob.shape}")
            mask = thin_mask(mask, np.asarray(ridge, dtype=bool))
    return _after_threshold(mask, steps, closing_radius=closing_radius, min_size=min_size, plug_size=plug_size,
                            tick=tick)


def _ticker(on_progress: ProgressFn | None, steps: Sequence[str]) -> Callable[..., None]:
    """``tick(step)``: ``on_progress(done, total, step)`` before each of ``steps`` that runs."""
    if on_progress is None:
        return lambda step, sub="": None
    names = [s for s in STEPS if s in steps]
    count = [0]

    def tick(step: str, sub: str = "") -> None:
        """Step ``step`` begins; with ``sub``, a part of the step begun last."""
        if sub:
            on_progress(max(count[0] - 1, 0), len(names), f"{step}: {sub}")
            return
        on_progress(min(count[0], len(names)), len(names), step)
        count[0] += 1
    return tick


def _after_threshold(mask: np.ndarray, steps: Sequence[str], *, closing_radius: Sequence[int],
                     min_size: int, plug_size: int = 0,
                     tick: Callable[..., None] = lambda step, sub="": None) -> np.ndarray:
    """The steps of :data:`STEPS` that follow the thresholds, as uint8."""
    plug_size = _check_min_size(plug_size, "plug_size")
    if "closing" in steps:
        tick("closing")
        mask = anisotropic_closing(mask, radius=closing_radius)
    if "fill_holes" in steps:
        tick("fill_holes")
        mask = fill_cavities(mask)
    if "bridges" in steps:
        tick("bridges")
        mask = cut_bridges(mask)
    return after_closing(mask, steps, closing_radius=closing_radius, min_size=min_size, plug_size=plug_size,
                         tick=tick)


def after_closing(mask: np.ndarray, steps: Sequence[str] = DEFAULT_STEPS, *, closing_radius: Sequence[int],
                  min_size: int, plug_size: int = 0,
                  tick: Callable[..., None] = lambda step, sub="": None) -> np.ndarray:
    """The last steps of the chain on a mask already thresholded, closed and
    cavity-filled: dust removal (``min_size``) and hole plugging
    (``plug_size``, :func:`plug_radius` of ``closing_radius``), then cavity
    filling again when a plug added voxels (a plug may close the mouth of a
    cavity) and ``"fill_holes"`` is among ``steps``; as uint8.  What the
    choice of ``min_size`` / ``plug_size`` on validation
    (:func:`nx47_pipeline.model.search.choose_postprocess`) varies."""
    plug_size = _check_min_size(plug_size, "plug_size")
    if "dust" in steps:
        tick("dust")
        mask = remove_small_components(mask, min_size=min_size)
    if "plug" in steps and plug_size:
        tick("plug")
        plugged = plug_holes(mask, max_size=plug_size, radius=plug_radius(closing_radius))
        if "fill_holes" in steps and np.count_nonzero(plugged) > np.count_nonzero(mask):
            plugged = fill_cavities(plugged)
        mask = plugged
    return mask.astype(np.uint8)


#: Bit of a threshold class byte set on :func:`surface_ridge` voxels (see
#: :func:`threshold_classes`); the low two bits hold 0 / 1 / 2.
RIDGE_BIT = 4


def postprocess_classes(
    classes: np.ndarray,
    *,
    closing_radius: Sequence[int] = (1, 2, 2),
    min_size: int = 100,
    thin: bool = False,
    plug_size: int = 0,
) -> np.ndarray:
    """:func:`postprocess` from threshold classes instead of probabilities.

    ``classes`` is 0 where ``prob <= low``, 1 where ``low < prob <= high``
    and 2 where ``prob > high``, plus :data:`RIDGE_BIT` on the ridge voxels
    when ``thin`` (:func:`threshold_classes`): what chunked inference
    stores, 1 byte per voxel, and all the post-processing needs.  The result
    equals ``postprocess(prob, low=low, high=high, thin=thin, ...)``.
    """
    classes = _check_3d("classes", classes)
    mask = hysteresis(classes & 3, low=0, high=1)  # levels 1 and 2 are weak, 2 strong
    if thin:
        mask = thin_mask(mask, (classes & RIDGE_BIT) > 0)
    return _after_threshold(mask, DEFAULT_STEPS, closing_radius=closing_radius, min_size=min_size,
                            plug_size=plug_size)


def threshold_classes(prob: np.ndarray, *, low: float, high: float, ridge: np.ndarray | None = None) -> np.ndarray:
    """uint8 0 / 1 / 2: at most ``low``, above ``low``, above ``high``; plus
    :data:`RIDGE_BIT` where ``ridge`` (bool, ``prob``'s shape) is set and the
    voxel is above ``low`` (``ridge = surface_ridge(prob, prob > low)``: what
    ``thin`` needs)."""
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise ValueError(f"need finite low <= high, got low={low!r}, high={high!r}")
    out = (prob > low).astype(np.uint8)
    out += prob > high
    if ridge is not None:
        ridge = np.asarray(ridge, dtype=bool)
        if ridge.shape != out.shape:
            raise ValueError(f"ridge shape {ridge.shape} != prob shape {out.shape}")
        out |= (ridge & (out > 0)).astype(np.uint8) * np.uint8(RIDGE_BIT)
    return out


def ablation_steps() -> list[tuple[str, tuple[str, ...]]]:
    """(name, steps) of the post-processing ablation: the default, each step
    removed, and each optional step added."""
    out = [("default: " + " + ".join(DEFAULT_STEPS), DEFAULT_STEPS)]
    for s in DEFAULT_STEPS:
        out.append((f"without {s}", tuple(x for x in DEFAULT_STEPS if x != s)))
    for s in STEPS:
        if s not in DEFAULT_STEPS:
            out.append((f"with {s}", tuple(x for x in STEPS if x in DEFAULT_STEPS or x == s)))
    return out


def _otsu_threshold(volume: np.ndarray) -> float:
    if volume.dtype == np.uint8:
        hist = np.bincount(volume.reshape(-1), minlength=256)
        return float(threshold_otsu(hist=(hist, np.arange(256))))
    return float(threshold_otsu(volume))


def otsu_baseline(volume: np.ndarray) -> np.ndarray:
    """Plain Otsu intensity threshold: the baseline a model must beat.

    Returns
    -------
    ndarray of uint8 in {0, 1}, shape of ``volume`` (1 where brighter than
    the Otsu threshold; all 0 for a constant volume)
    """
    volume = _check_3d("volume", volume)
    if volume.size == 0 or volume.min() == volume.max():
        return np.zeros(volume.shape, dtype=np.uint8)
    return (volume > _otsu_threshold(volume)).astype(np.uint8)


def _quantile_above(smooth: np.ndarray, threshold: float, q: float) -> float:
    """The ``q`` quantile of the values of ``smooth`` above ``threshold``."""
    if smooth.dtype == np.uint8:
        hist = np.bincount(smooth.reshape(-1), minlength=256)
        hist[: int(np.floor(threshold)) + 1] = 0
        total = hist.sum()
        if total == 0:
            return threshold
        k = int(np.searchsorted(np.cumsum(hist), q * total, side="left"))
        return float(min(k, 255))
    above = smooth[smooth > threshold]
    return float(np.quantile(above, q)) if above.size else threshold


def fallback_segment(
    volume: np.ndarray,
    *,
    sigma: float = 1.0,
    fg_quantile: float = 0.4,
    closing_radius: Sequence[int] = (1, 2, 2),
    min_size: int = 100,
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """Cheap model-free segmentation used when the time budget runs short.

    Gaussian smoothing (``sigma``), Otsu threshold of the smoothed intensity
    (the papyrus), then a second threshold at the ``fg_quantile`` quantile of
    the papyrus intensities, which keeps the brighter core of each sheet
    where the surface lies (whole sheets are about three times thicker than
    the labelled surface), then :func:`anisotropic_closing` and
    :func:`remove_small_components`.  ``fg_quantile=0`` keeps the whole
    Otsu foreground.  Works on any volume (a constant one gives an empty
    mask).  ``on_progress(done, total, step)`` is called before each of its
    four steps.

    Returns
    -------
    ndarray of uint8 in {0, 1}, shape of ``volume``
    """
    volume = _check_3d("volume", volume)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if not 0 <= fg_quantile < 1:
        raise ValueError(f"fg_quantile must be in [0, 1), got {fg_quantile!r}")
    report = on_progress or (lambda done, total, step: None)
    if volume.size == 0 or volume.min() == volume.max():
        return np.zeros(volume.shape, dtype=np.uint8)
    report(0, 4, "smoothing")
    if sigma > 0:
        work = volume.astype(np.float32) if volume.dtype != np.uint8 else volume
        smooth = ndimage.gaussian_filter(work, sigma, truncate=3.0)
    else:
        smooth = volume
    if smooth.min() == smooth.max():
        return np.zeros(volume.shape, dtype=np.uint8)
    report(1, 4, "thresholds")
    threshold = _otsu_threshold(smooth)
    if fg_quantile > 0:
        threshold = max(threshold, _quantile_above(smooth, threshold, fg_quantile))
    mask = smooth > threshold
    if not mask.any():  # a quantile on a two-level volume can leave nothing
        mask = smooth > _otsu_threshold(smooth)
    report(2, 4, "closing")
    mask = anisotropic_closing(mask, radius=closing_radius)
    report(3, 4, "dust")
    mask = remove_small_components(mask, min_size=min_size)
    return mask.astype(np.uint8)


def probability_to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] to uint8 0..255 (rounded, clipped) for TIFF storage."""
    prob = np.asarray(prob, dtype=np.float32)
    out = np.rint(np.clip(prob, 0.0, 1.0) * np.float32(255.0))
    return out.astype(np.uint8)


def uint8_to_probability(arr: np.ndarray) -> np.ndarray:
    """uint8 0..255 back to float32 probability in [0, 1]."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got dtype {arr.dtype}")
    return arr.astype(np.float32) * np.float32(1.0 / 255.0)
