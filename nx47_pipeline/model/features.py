"""Per-voxel filter bank and class-balanced voxel sampling.

Features of a volume (``feature_names`` gives their order):

* ``intensity`` -- the raw intensity scaled to [0, 1] (uint8 / 255; other
  integer types by their maximum; floating volumes are taken as they are);
* for each Gaussian scale sigma:

  - ``smooth_s<sigma>`` -- Gaussian-smoothed intensity;
  - ``gradmag_s<sigma>`` -- gradient magnitude of the smoothed volume
    (central differences), times sigma;
  - ``hess_lmax_s<sigma>`` -- the largest-magnitude Hessian eigenvalue
    (signed), times sigma**2: strongly negative on bright sheets;
  - ``sheetness_s<sigma>`` -- ``|l3| - |l2|`` where ``l3`` is negative (a
    bright plate: one strong curvature across the sheet, weak along it),
    else 0; with ``|l1| <= |l2| <= |l3|`` the eigenvalues by magnitude;
  - ``laplacian_s<sigma>`` -- trace of the Hessian, times sigma**2;
  - ``gradcurv_s<sigma>`` -- the second derivative along the gradient
    direction, ``g^T H g / |g|^2``, times sigma**2: which side of a ridge a
    voxel lies on and how far (positive beyond a flank's inflection point,
    negative between the inflection points), so an asymmetric sheet's steep
    and slow sides differ;
  - ``local_std_s<sigma>`` -- Gaussian-weighted local standard deviation.

The Hessian of the smoothed volume is taken by finite differences and its
eigenvalues in closed form (trigonometric solution of the characteristic
cubic of a symmetric 3x3 matrix, vectorised in float32), which is far
cheaper than ``skimage.feature.hessian_matrix_eigvals`` on a 320^3 volume.

Large volumes are processed in z-slabs with a halo (:func:`halo_for`) so that
the full feature stack is never held at once; the slab results equal the
whole-volume computation up to float rounding.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

ProgressFn = Callable[[int, int, str], None]

#: Seconds between two looks at the feature groups of the slab the caller
#: waits for (see :func:`iter_feature_slabs`).
WAIT_REPORT_S = 0.5

#: Gaussian truncation: the kernel radius is
#: ``int(TRUNCATE * sigma + 0.5)``.
TRUNCATE = 3.0
#: Extra z-rows needed by the finite-difference derivatives.
DERIV_REACH = 1
#: Voxels per chunk of pointwise work (keeps temporaries in cache).
CHUNK_VOXELS = 100_000
PER_SCALE = ("smooth", "gradmag", "hess_lmax", "sheetness", "laplacian", "gradcurv", "local_std")


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in scales)
    except TypeError:
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    return out


def feature_names(scales: Sequence[float] = (1.0, 2.0, 4.0)) -> list[str]:
    """Names of the features produced by :func:`compute_features`, in order.

    Parameters
    ----------
    scales : sequence of float
        Gaussian scales (voxels).

    Returns
    -------
    list of str
        ``["intensity", "smooth_s1", "gradmag_s1", ...]``.
    """
    names = ["intensity"]
    for s in _check_scales(scales):
        names.extend(f"{kind}_s{s:g}" for kind in PER_SCALE)
    return names


def halo_for(scales: Sequence[float]) -> int:
    """Slab overlap (voxels along z) that makes slab-wise features exact.

    Parameters
    ----------
    scales : sequence of float
        Gaussian scales.

    Returns
    -------
    int
        The Gaussian kernel radius of the largest scale
        (``int(TRUNCATE * sigma + 0.5)``) plus :data:`DERIV_REACH` row for the
        finite differences.
    """
    smax = max(_check_scales(scales))
    return int(TRUNCATE * smax + 0.5) + DERIV_REACH


def _as_unit_float(volume: np.ndarray) -> np.ndarray:
    """Intensity scaled to [0, 1] as float32 (a view-free copy)."""
    if volume.dtype == np.uint8:
        return volume.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(volume.dtype, np.integer):
        info = np.iinfo(volume.dtype)
        return volume.astype(np.float32) / np.float32(info.max)
    if np.issubdtype(volume.dtype, np.floating) or volume.dtype == np.bool_:
        return volume.astype(np.float32)
    raise ValueError(f"volume dtype must be integer or floating, got {volume.dtype}")


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (Z, Y, X), got shape {volume.shape}")
    if min(volume.shape) < 2:
        raise ValueError(f"volume must be at least 2 voxels along each axis, got shape {volume.shape}")
    return volume


def sym3_eigvals(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of symmetric 3x3 matrices ``[[a, d, e], [d, b, f], [e, f, c]]``.

    Closed-form (trigonometric) solution, vectorised over arrays of any shape.

    Parameters
    ----------
    a, b, c : ndarray
        Diagonal entries.
    d, e, f : ndarray
        Off-diagonal entries (0-1, 0-2, 1-2).

    Returns
    -------
    e1, e2, e3 : ndarray
        Eigenvalues in decreasing algebraic order ``e1 >= e2 >= e3``, in the
        dtype of the inputs.
    """
    dtype = np.result_type(a, np.float32)
    T = dtype.type
    q = a + b
    q += c
    q *= T(1.0 / 3.0)
    aq = a - q
    bq = b - q
    cq = c - q
    # p2 = aq^2 + bq^2 + cq^2 + 2 (d^2 + e^2 + f^2);  p = sqrt(p2 / 6)
    p = aq * aq
    tmp = bq * bq
    p += tmp
    np.multiply(cq, cq, out=tmp)
    p += tmp
    off = d * d
    np.multiply(e, e, out=tmp)
    off += tmp
    np.multiply(f, f, out=tmp)
    off += tmp
    off *= T(2.0)
    p += off
    del off
    p *= T(1.0 / 6.0)
    np.sqrt(p, out=p)
    # det(A - qI) = aq (bq cq - f^2) - d (d cq - f e) + e (d f - bq e)
    det = bq * cq
    np.multiply(f, f, out=tmp)
    det -= tmp
    det *= aq
    np.multiply(d, cq, out=tmp)
    tmp -= f * e
    tmp *= d
    det -= tmp
    np.multiply(d, f, out=tmp)
    tmp -= bq * e
    tmp *= e
    det += tmp
    del aq, bq, cq
    # r = det / (2 p^3), 0 where p == 0 (a multiple of the identity)
    np.multiply(p, p, out=tmp)
    tmp *= p
    tmp *= T(2.0)
    np.maximum(tmp, np.finfo(dtype).tiny, out=tmp)
    r = np.divide(det, tmp, out=det)  # det == 0 where p == 0 (A = qI)
    del det
    np.clip(r, -1.0, 1.0, out=r)
    phi = np.arccos(r, out=r)
    phi *= T(1.0 / 3.0)
    p *= T(2.0)
    e1 = np.cos(phi, out=tmp)
    e1 *= p
    e1 += q
    phi += T(2.0 * np.pi / 3.0)
    e3 = np.cos(phi, out=phi)
    e3 *= p
    e3 += q
    q *= T(3.0)
    q -= e1
    q -= e3
    return e1, q, e3


def _along(ndim: int, axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    """Index selecting ``start:stop`` along ``axis`` of an ``ndim``-d array."""
    s = [slice(None)] * ndim
    s[axis] = slice(start, stop)
    return tuple(s)


def _diff1(a: np.ndarray, axis: int) -> np.ndarray:
    """Central difference along ``axis``, one-sided at the edges (needs >= 2
    samples); the same values as ``np.gradient`` but float32 throughout
    (``np.gradient`` goes through float64 and is ~10x slower here)."""
    out = np.empty_like(a)
    n = a.shape[axis]

    def sl(start, stop):
        return _along(a.ndim, axis, start, stop)

    if n > 2:
        mid = out[sl(1, n - 1)]
        np.subtract(a[sl(2, n)], a[sl(0, n - 2)], out=mid)
        mid *= np.float32(0.5)
    np.subtract(a[sl(1, 2)], a[sl(0, 1)], out=out[sl(0, 1)])
    np.subtract(a[sl(n - 1, n)], a[sl(n - 2, n - 1)], out=out[sl(n - 1, n)])
    return out


def _second_diff(a: np.ndarray, axis: int) -> np.ndarray:
    """``a[i+1] - 2 a[i] + a[i-1]`` along ``axis`` (needs >= 2 samples).

    Edges follow scipy's ``reflect`` extension (the edge sample repeated), so
    an edge value needs only its one neighbour: ``a[1] - a[0]``.
    """
    out = np.empty_like(a)
    n = a.shape[axis]

    def sl(start, stop):
        return _along(a.ndim, axis, start, stop)

    if n > 2:
        mid = out[sl(1, n - 1)]
        np.subtract(a[sl(2, n)], a[sl(1, n - 1)], out=mid)
        mid -= a[sl(1, n - 1)]
        mid += a[sl(0, n - 2)]
    np.subtract(a[sl(1, 2)], a[sl(0, 1)], out=out[sl(0, 1)])
    np.subtract(a[sl(n - 2, n - 1)], a[sl(n - 1, n)], out=out[sl(n - 1, n)])
    return out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised float32 Gaussian kernel of radius ``int(TRUNCATE*sigma+0.5)``."""
    r = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _gaussian_rows(block: np.ndarray, sigma: float, lo: int, hi: int) -> np.ndarray:
    """Gaussian smoothing of ``block`` (float32), rows ``lo:hi`` only.

    The z pass is a symmetric weighted sum of shifted rows computed for the
    requested rows only (scipy's ``reflect`` extension at the block's ends);
    the y and x passes (scipy ``gaussian_filter1d``) run on those rows only.
    """
    w = _gaussian_kernel(sigma)
    r = w.size // 2
    nz = block.shape[0]
    a = max(0, lo - r)
    b = min(nz, hi + r)
    src = block[a:b]
    pad_lo, pad_hi = r - (lo - a), r - (b - hi)
    if pad_lo or pad_hi:
        src = np.pad(src, ((pad_lo, pad_hi), (0, 0), (0, 0)), mode="symmetric")
    n = hi - lo
    t = src[r : r + n] * w[r]
    tmp = np.empty_like(t)
    for j in range(1, r + 1):
        np.add(src[r + j : r + j + n], src[r - j : r - j + n], out=tmp)
        tmp *= w[r + j]
        t += tmp
    del tmp, src
    t = ndimage.correlate1d(t, w, axis=1, mode="reflect")
    return ndimage.correlate1d(t, w, axis=2, mode="reflect")


def _z_derivatives(piece: np.ndarray, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """First (central) and second z-differences of ``piece`` at rows ``q0:q1``.

    Rows without a neighbour on one side (the volume border) use the
    one-sided first difference (as ``np.gradient``) and the ``reflect``
    second difference (as :func:`_second_diff`).
    """
    n = piece.shape[0]
    lo = max(q0, 1)
    hi = min(q1, n - 1)
    d1 = np.empty((q1 - q0,) + piece.shape[1:], dtype=piece.dtype)
    d2 = np.empty_like(d1)
    if hi > lo:
        a = piece[lo + 1 : hi + 1]
        b = piece[lo - 1 : hi - 1]
        c = piece[lo:hi]
        o1 = d1[lo - q0 : hi - q0]
        np.subtract(a, b, out=o1)
        o1 *= np.float32(0.5)
        o2 = d2[lo - q0 : hi - q0]
        np.add(a, b, out=o2)
        o2 -= c
        o2 -= c
    if q0 == 0:
        np.subtract(piece[1], piece[0], out=d1[0])
        np.copyto(d2[0], d1[0])
    if q1 == n:
        np.subtract(piece[n - 1], piece[n - 2], out=d1[-1])
        np.negative(d1[-1], out=d2[-1])
    return d1, d2


def _hessian_chunk(piece: np.ndarray, q0: int, q1: int, sigma: float, out: np.ndarray) -> None:
    """Derivative features of ``piece[q0:q1]`` into ``out`` (5, q1-q0, Y, X).

    ``piece`` has one extra row on each side of ``q0:q1`` unless that side is
    the volume border.  Writes gradient magnitude, largest-magnitude Hessian
    eigenvalue, sheetness, Laplacian and the second derivative along the
    gradient (scale-normalised: sigma times the gradient, sigma**2 times the
    Hessian).
    """
    core = piece[q0:q1]
    gz, hzz = _z_derivatives(piece, q0, q1)
    gy = _diff1(core, 1)
    gx = _diff1(core, 2)
    gm = gz * gz
    tmp = gy * gy
    gm += tmp
    np.multiply(gx, gx, out=tmp)
    gm += tmp
    del tmp
    np.multiply(np.sqrt(gm), np.float32(sigma), out=out[0])
    hzy = _diff1(gz, 1)
    hzx = _diff1(gz, 2)
    hyx = _diff1(gy, 2)
    hyy = _second_diff(core, 1)
    hxx = _second_diff(core, 2)
    s2 = np.float32(sigma * sigma)
    # g^T H g / |g|^2 (0 where the gradient vanishes)
    num = gz * gz * hzz
    num += gy * gy * hyy
    num += gx * gx * hxx
    cross = gz * gy * hzy
    cross += gz * gx * hzx
    cross += gy * gx * hyx
    cross *= np.float32(2.0)
    num += cross
    del cross, gz, gy, gx
    gm += np.float32(1e-12)
    np.divide(num, gm, out=num)
    np.multiply(num, s2, out=out[4])
    del num, gm
    lap = hzz + hyy
    lap += hxx
    np.multiply(lap, s2, out=out[3])
    del lap
    e1, e2, e3 = sym3_eigvals(hzz, hyy, hxx, hzy, hzx, hyx)
    del hzz, hyy, hxx, hzy, hzx, hyx
    # With e1 >= e2 >= e3: the largest magnitude is e1 when e1 + e3 > 0,
    # else e3.  Sheetness |l3| - |l2| where l3 = e3 < 0 is
    # -e3 - max(e1, -e2) = min(-(e1 + e3), e2 - e3) (>= 0 there), else 0.
    ssum = e1 + e3
    top_is_e1 = ssum > 0
    lmax = np.where(top_is_e1, e1, e3)
    np.multiply(lmax, s2, out=out[1])
    np.negative(ssum, out=ssum)
    np.subtract(e2, e3, out=e2)
    np.minimum(ssum, e2, out=ssum)
    np.copyto(ssum, 0, where=top_is_e1)
    np.multiply(ssum, s2, out=out[2])


def _block_features(
    block: np.ndarray,
    z_lo: int,
    z_hi: int,
    scales: tuple[float, ...],
    out: np.ndarray,
    on_progress: ProgressFn | None = None,
) -> None:
    """Features of ``block[z_lo:z_hi]`` (block in [0, 1] float32) into ``out``.

    ``block`` holds the core slab plus whatever halo is available; the caller
    guarantees enough halo for exactness (or that the halo ends at the true
    volume border).  The pointwise work runs in chunks of about
    :data:`CHUNK_VOXELS` voxels (whole z-rows) so its temporaries stay in cache.
    ``on_progress(done, total, group)`` after each feature group (``done``
    counts groups; within the gradient + Hessian group it is fractional,
    after each chunk of rows).
    """
    total = 1 + 3 * len(scales)
    done = 0
    nz = block.shape[0]
    nc = z_hi - z_lo
    out[0] = block[z_lo:z_hi]
    done += 1
    if on_progress is not None:
        on_progress(done, total, "intensity")
    sq = block * block
    # Derivatives need DERIV_REACH rows beyond the core (or the border).
    e_lo = max(0, z_lo - DERIV_REACH)
    e_hi = min(nz, z_hi + DERIV_REACH)
    c0 = z_lo - e_lo
    chunk = max(1, int(round(CHUNK_VOXELS / (block.shape[1] * block.shape[2]))))
    k = 1
    for s in scales:
        label = f"\u03c3={s:g}"
        ext = _gaussian_rows(block, s, e_lo, e_hi)
        out[k] = ext[c0 : c0 + nc]
        done += 1
        if on_progress is not None:
            on_progress(done, total, f"smooth {label}")

        for u in range(0, nc, chunk):
            w = min(nc, u + chunk)
            p_lo = max(0, c0 + u - DERIV_REACH)
            p_hi = min(ext.shape[0], c0 + w + DERIV_REACH)
            q0 = c0 + u - p_lo
            _hessian_chunk(ext[p_lo:p_hi], q0, q0 + (w - u), s, out[k + 1 : k + 6, u:w])
            if on_progress is not None and w < nc:  # the longest group: its rows too
                on_progress(done + w / nc, total, f"gradient+hessian {label}")
        done += 1
        if on_progress is not None:
            on_progress(done, total, f"gradient+hessian {label}")

        var = _gaussian_rows(sq, s, z_lo, z_hi)
        for u in range(0, nc, chunk):
            w = min(nc, u + chunk)
            m = ext[c0 + u : c0 + w]
            v = var[u:w]
            v -= m * m
            np.maximum(v, 0, out=v)
            np.sqrt(v, out=out[k + 6, u:w])
        del var, ext
        done += 1
        if on_progress is not None:
            on_progress(done, total, f"local std {label}")
        k += len(PER_SCALE)


def compute_features(
    volume: np.ndarray,
    *,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    on_progress: ProgressFn | None = None,
) -> np.ndarray:
    """Whole-volume feature stack.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume (uint8 in the competition data).
    scales : sequence of float
        Gaussian scales.
    on_progress : callable, optional
        ``on_progress(done, total, what)`` after each feature group
        ("intensity", "smooth σ=2", "gradient+hessian σ=2", "local std σ=2",
        ...; ``total = 1 + 3 * len(scales)``). It may raise to cancel.

    Returns
    -------
    ndarray, float32, shape (n_features, Z, Y, X)
        In the order of :func:`feature_names`. Holds every feature of the whole
        volume: for large volumes use :func:`iter_feature_slabs`.
    """
    volume = _check_volume(volume)
    sc = _check_scales(scales)
    block = _as_unit_float(volume)
    out = np.empty((len(feature_names(sc)),) + volume.shape, dtype=np.float32)
    _block_features(block, 0, volume.shape[0], sc, out, on_progress)
    return out


def iter_feature_slabs(
    volume: np.ndarray,
    *,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    slab: int = 32,
    on_progress: ProgressFn | None = None,
    workers: int | None = None,
    only: Sequence[int] | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Features of consecutive z-slabs, each computed with a halo.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume.
    scales : sequence of float
        Gaussian scales.
    slab : int
        Slab thickness along z (the last slab may be thinner).
    on_progress : callable, optional
        ``on_progress(done_slabs, n_slabs, "features z0:z1")`` after each slab,
        and ``on_progress(k + groups_done / groups, n_slabs, "features z0:z1:
        <group>")`` (a fraction) as the feature groups of slab ``k + 1`` finish
        (looked at every :data:`WAIT_REPORT_S` while the caller waits for it).
    workers : int, optional
        Threads computing slabs ahead of the caller (default
        :func:`default_workers`); results are identical for any value.
    only : sequence of int, optional
        Indices of the slabs to compute (slab ``k`` starts at ``k * slab``);
        the others are skipped.  Default: every slab.

    Yields
    ------
    z0, z1 : int
        The slab ``volume[z0:z1]``.
    features : ndarray, float32, shape (n_features, z1 - z0, Y, X)
        Equal to ``compute_features(volume)[:, z0:z1]`` up to float rounding.
    """
    volume = _check_volume(volume)
    sc = _check_scales(scales)
    if isinstance(slab, bool) or int(slab) != slab or slab < 1:
        raise ValueError(f"slab must be a positive integer, got {slab!r}")
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    n_slabs = -(-volume.shape[0] // int(slab))
    if only is not None:
        only = sorted({int(k) for k in only})
        if only and (only[0] < 0 or only[-1] >= n_slabs):
            raise ValueError(f"only must hold slab indices in [0, {n_slabs}), got {only[:5]}...")
    return _slab_gen(volume, sc, int(slab), on_progress, int(workers), only)


def default_workers() -> int:
    """Threads computing feature slabs: the usable cores, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _slab_gen(
    volume: np.ndarray, sc: tuple[float, ...], slab: int, on_progress: ProgressFn | None,
    workers: int, only: Sequence[int] | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    halo = halo_for(sc)
    nz = volume.shape[0]
    nf = len(feature_names(sc))
    starts = list(range(0, nz, slab))
    if only is not None:
        starts = [starts[k] for k in only]

    # feature groups finished in each slab being computed (written by the
    # computing thread, read by the caller's): the caller reports them while
    # it waits, so a slow slab on a busy machine is never a silence
    groups: dict[int, tuple[int, int, str]] = {}

    def compute(z0: int, tick: ProgressFn | None = None) -> tuple[int, int, np.ndarray]:
        z1 = min(nz, z0 + slab)
        h0 = max(0, z0 - halo)
        h1 = min(nz, z1 + halo)

        def on_group(done: int, total: int, what: str) -> None:
            groups[z0] = (done, total, what)
            if tick is not None:
                tick(done, total, what)

        block = _as_unit_float(volume[h0:h1])
        out = np.empty((nf, z1 - z0) + volume.shape[1:], dtype=np.float32)
        _block_features(block, z0 - h0, z1 - h0, sc, out, on_group)
        groups.pop(z0, None)
        return z0, z1, out

    def report(i: int, z0: int, z1: int) -> None:
        if on_progress is not None:
            on_progress(i, len(starts), f"features z{z0}:{z1}")

    def partial(i: int, z0: int, done: int, total: int, what: str) -> None:
        """Slab ``i`` (from 1) of ``starts`` has ``done`` of ``total`` feature groups."""
        if on_progress is not None:
            z1 = min(nz, z0 + slab)
            on_progress(i - 1 + done / max(total, 1), len(starts), f"features z{z0}:{z1}: {what}")

    if workers == 1 or len(starts) == 1:
        for i, z0 in enumerate(starts, start=1):
            z0, z1, out = compute(z0, lambda d, t, what, _i=i, _z0=z0: partial(_i, _z0, d, t, what))
            report(i, z0, z1)
            yield z0, z1, out
        return
    # scipy.ndimage and numpy release the GIL: ``workers`` threads compute the
    # next slabs while the caller consumes this one.  Results come back in z
    # order and progress is reported (and may raise) on the caller's thread,
    # also while it waits for a slab (its finished feature groups, every
    # WAIT_REPORT_S); closing the generator cancels the slabs not started and
    # waits for the running ones (at most ``workers`` slabs).
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nx47-features") as pool:
        queued = collections.deque(pool.submit(compute, z0) for z0 in starts[:workers])
        rest = iter(starts[workers:])
        try:
            for i in range(1, len(starts) + 1):
                fut = queued[0]
                z_wait = starts[i - 1]
                seen = None
                while True:
                    try:
                        fut.result(timeout=WAIT_REPORT_S)
                        break
                    except concurrent.futures.TimeoutError:
                        now = groups.get(z_wait)
                        if now is not None and now != seen:
                            seen = now
                            partial(i, z_wait, *now)
                z0, z1, out = queued.popleft().result()
                nxt = next(rest, None)
                if nxt is not None:
                    queued.append(pool.submit(compute, nxt))
                report(i, z0, z1)
                yield z0, z1, out
        finally:
            for fut in queued:
                fut.cancel()


def _check_label(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    label = np.asarray(label)
    if label.shape != tuple(shape):
        raise ValueError(f"label shape {label.shape} does not match volume shape {tuple(shape)}")
    bad = np.setdiff1d(np.unique(label), [0, 1, 2])
    if bad.size:
        raise ValueError(f"label values must be 0, 1 or 2 (ignore), got {bad[:5].tolist()}")
    return label


def _choose_indices(
    label: np.ndarray, n_per_class: int, seed: int, *, z_ranges: Sequence[tuple[int, int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flat voxel indices (sorted within each class) and their 0/1 labels;
    with ``z_ranges``, only voxels in those ``[z0, z1)`` ranges are candidates."""
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    rng = np.random.default_rng(seed)
    flat = label.reshape(-1)
    if z_ranges is not None:
        plane = int(np.prod(label.shape[1:]))
        keep = np.zeros(flat.size, dtype=bool)
        for z0, z1 in z_ranges:
            keep[z0 * plane:z1 * plane] = True
        flat = np.where(keep, flat, np.uint8(2))
    idx_parts, y_parts = [], []
    for cls in (0, 1):
        candidates = np.flatnonzero(flat == cls)
        take = min(int(n_per_class), candidates.size)
        if take < candidates.size:
            chosen = np.sort(rng.choice(candidates, size=take, replace=False))
        else:
            chosen = candidates
        idx_parts.append(chosen)
        y_parts.append(np.full(chosen.size, cls, dtype=np.uint8))
    return np.concatenate(idx_parts), np.concatenate(y_parts)


def sample_slabs(nz: int, *, slab: int, max_slabs: int | None, seed: int) -> list[int] | None:
    """Indices of ``max_slabs`` z-slabs spread evenly along ``nz`` rows (a
    seeded offset); None when every slab is used."""
    if max_slabs is None:
        return None
    if isinstance(max_slabs, bool) or int(max_slabs) != max_slabs or max_slabs < 1:
        raise ValueError(f"max_slabs must be a positive integer or None, got {max_slabs!r}")
    n = -(-int(nz) // int(slab))
    if max_slabs >= n:
        return None
    step = n / max_slabs
    offset = np.random.default_rng(seed).random() * step
    return sorted({min(n - 1, int(offset + i * step)) for i in range(int(max_slabs))})


def volume_sample(
    volume: np.ndarray,
    label: np.ndarray,
    *,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    n_per_class: int,
    seed: int,
    slab: int = 32,
    max_slabs: int | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced sample of one volume, features computed slab-wise.

    Gives the same rows as sampling the whole feature stack of
    :func:`compute_features` at the same voxels (up to float rounding) while
    holding only one slab of features.
    With ``max_slabs``, the sample is drawn from that many z-slabs chosen
    evenly along z (seeded offset) and only those slabs' features are
    computed: the cost falls with the fraction of slabs, not with the sample.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume.
    label : ndarray, shape (Z, Y, X)
        0 / 1 / 2 (ignore).
    scales : sequence of float
        Gaussian scales.
    n_per_class : int
        Up to this many voxels of each class.
    seed : int
        Random seed.
    slab : int
        Slab thickness along z.
    max_slabs : int, optional
        Draw the sample from at most this many slabs (None: all slabs).
    on_progress : callable, optional
        ``on_progress(done_slabs, n_slabs, what)``.

    Returns
    -------
    X : ndarray, float32, shape (n, n_features)
    y : ndarray, uint8, shape (n,)
    """
    volume = _check_volume(volume)
    label = _check_label(label, volume.shape)
    sc = _check_scales(scales)
    only = sample_slabs(volume.shape[0], slab=slab, max_slabs=max_slabs, seed=seed)
    z_ranges = None if only is None else [(k * slab, min(volume.shape[0], (k + 1) * slab)) for k in only]
    if on_progress is not None:
        on_progress(0, 1, "choosing the sample voxels")
    idx, y = _choose_indices(label, n_per_class, seed, z_ranges=z_ranges)
    return features_at(volume, idx, scales=sc, slab=slab, on_progress=on_progress, only=only), y


def features_at(
    volume: np.ndarray,
    idx: np.ndarray,
    *,
    scales: Sequence[float] = (1.0, 2.0, 4.0),
    slab: int = 32,
    on_progress: ProgressFn | None = None,
    only: Sequence[int] | None = None,
) -> np.ndarray:
    """The filter bank of ``volume`` at the flat voxel indices ``idx``,
    computed slab-wise (one slab of features held at a time).

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        CT volume (or a probability map as uint8).
    idx : ndarray of int
        Flat indices into ``volume``, in any order.
    scales, slab, on_progress, only
        As in :func:`iter_feature_slabs` (``only``: the slabs holding ``idx``).

    Returns
    -------
    ndarray, float32, shape (len(idx), n_features)
        Row ``i`` is ``compute_features(volume)[:, idx[i]]`` up to float rounding.
    """
    volume = _check_volume(volume)
    sc = _check_scales(scales)
    nf = len(feature_names(sc))
    X = np.empty((idx.size, nf), dtype=np.float32)
    plane = volume.shape[1] * volume.shape[2]
    z_of = idx // plane
    for z0, z1, feats in iter_feature_slabs(volume, scales=sc, slab=slab, on_progress=on_progress, only=only):
        rows = np.flatnonzero((z_of >= z0) & (z_of < z1))
        if rows.size:
            local = idx[rows] - z0 * plane
            X[rows] = feats.reshape(nf, -1)[:, local].T
    return X
