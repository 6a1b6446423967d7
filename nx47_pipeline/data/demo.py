"""A synthetic, scroll-like demo dataset in the competition's layout.

The real data cannot be reached from every machine, so NX47 generates a small
dataset with the same layout and file format (LZW uint8 TIFF, ``id,scroll_id``
csvs with ghost rows, a ``deprecated_*`` folder pair) and volumes that pose the
same problem as the CT chunks:

* several stacked papyrus sheets, 6–10 voxels thick, winding (smooth random
  displacement fields shared by the stack plus per-sheet wobble), sometimes
  touching their neighbour;
* an intensity ridge inside each sheet with an asymmetric profile, fibre
  texture (two crossed fibre layers), uneven illumination, a slight blur,
  noise, and bright debris that is *not* labelled;
* label 1: a thin (3 voxel) surface layer 1–2 voxels off the ridge, always on
  the same side of the sheet; label 2 (ignore): a 3-voxel border on every face
  plus unannotated regions, 50–70 % of the voxels in all; label 0 elsewhere.

Every scroll has its own style (sheet spacing, thickness, contrast, noise),
so a scroll-aware validation split measures something.  The same seed gives
byte-identical files.

Demo-only extra: the labels of the test volumes are written to
``test_labels_hidden/`` so a local score can be computed for the demo
submission; the real dataset has no such folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from nx47_pipeline.data.discovery import default_demo_root
from nx47_pipeline.io.atomic import write_text
from nx47_pipeline.io.volumes import write_volume

#: Scroll ids of the competition, used for the demo's scrolls.
SCROLL_IDS: tuple[str, ...] = ("34117", "35360", "26010", "26002", "44430", "53997")

#: Default edge lengths by train index (mixed sizes, mostly 80³).
DEFAULT_EDGE = 80

_MIN_EDGE = 16
_BORDER = 3
#: Steepest slope of a sheet against the stack's plane, shared winding and
#: per-sheet wobble apart: sheets are height fields over that plane, and a
#: near-vertical height field makes curtains of "sheet" along the axis and
#: labelled layers full of holes.
_MAX_SHARED_SLOPE = 0.6
_MAX_WOBBLE_SLOPE = 0.3
#: Least spacing of two neighbouring sheets along their normal (voxels): the
#: 3-voxel labelled layers of neighbours stay at least 2 voxels apart.
_LABEL_SPACING = 5.0

ShapeArg = int | tuple[int, int, int] | None


# ----------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------
def parse_shape(text: str) -> int | tuple[int, int, int]:
    """Parse a volume size given on a command line.

    Parameters
    ----------
    text : str
        An edge length (``"80"``) or ``"Z,Y,X"`` (``"64,80,80"``; ``x`` also
        separates).

    Returns
    -------
    int or tuple of int

    Raises
    ------
    ValueError
        Naming ``text`` when it is not one or three integers >= 16.
    """
    raw = str(text).strip().lower().replace("x", ",")
    parts = [p.strip() for p in raw.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"shape {text!r} is not an edge length or Z,Y,X (e.g. '80' or '64,80,80')"
        ) from None
    if len(values) not in (1, 3):
        raise ValueError(f"shape {text!r} must have 1 or 3 numbers, got {len(values)}")
    if min(values) < _MIN_EDGE:
        raise ValueError(f"shape {text!r}: every edge must be >= {_MIN_EDGE}")
    return values[0] if len(values) == 1 else (values[0], values[1], values[2])


def parse_counts(text: str, *, what: str) -> list[tuple[str, int]]:
    """Parse ``"KEY:COUNT,KEY:COUNT"`` (``--shapes 320:738,256:47``, ``--scrolls 34117:382,...``).

    Parameters
    ----------
    text : str
        Comma-separated ``key:count`` items, counts integers >= 1.
    what : str
        The option's name, for errors.

    Returns
    -------
    list of (str, int)

    Raises
    ------
    ValueError
        Naming ``what`` and the item that is not ``key:count`` with a count >= 1,
        or a key given twice.
    """
    out: list[tuple[str, int]] = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        key, sep, count = item.rpartition(":")
        try:
            n = int(count)
        except ValueError:
            n = 0
        if not sep or not key.strip() or n < 1:
            raise ValueError(f"{what}: {item!r} is not KEY:COUNT with a count >= 1 (e.g. '320:738')")
        if any(k == key.strip() for k, _ in out):
            raise ValueError(f"{what}: {key.strip()!r} is given twice")
        out.append((key.strip(), n))
    if not out:
        raise ValueError(f"{what}: {text!r} names nothing (e.g. '320:738,256:47')")
    return out


def _spread(counts: Sequence[tuple[object, int]], n: int, rng: np.random.Generator, what: str,
            also: str = "") -> list:
    """``n`` keys holding ``counts`` (which must sum to ``n``), in a seeded random order."""
    total = sum(c for _, c in counts)
    if total != n:
        raise ValueError(f"{what}: the counts sum to {total}, but there are {n} training pairs (--n-train){also}")
    keys = [k for k, c in counts for _ in range(c)]
    return [keys[i] for i in rng.permutation(n)]


def _as_shape(shape: ShapeArg, index: int, split: str) -> tuple[int, int, int]:
    if shape is None:
        if split == "train":
            edge = 96 if index == 2 else (64 if index % 4 == 3 else DEFAULT_EDGE)
        else:
            edge = 64 if index % 2 == 1 else DEFAULT_EDGE
        return (edge, edge, edge)
    if isinstance(shape, (int, np.integer)):
        out = (int(shape),) * 3
    else:
        out = tuple(int(v) for v in shape)
        if len(out) != 3:
            raise ValueError(f"shape must be an int or a (Z, Y, X) tuple, got {shape!r}")
    if min(out) < _MIN_EDGE:
        raise ValueError(f"shape must have every edge >= {_MIN_EDGE}, got {shape!r}")
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------
# random fields
# ----------------------------------------------------------------------
def _seed_of(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with ~``cells`` bumps per edge.

    Cubic interpolation of a coarse random grid up to at most 48 samples per
    edge, then linear interpolation to ``shape`` (fast for 320³).
    """
    coarse = [max(2, int(round(cells)) + 2) for _ in shape]
    g = rng.standard_normal(coarse).astype(np.float32)
    mid = [min(int(s), 48) for s in shape]
    f = ndi.zoom(g, [m / c for m, c in zip(mid, coarse)], order=3, mode="reflect", grid_mode=True)
    if any(int(s) != m for s, m in zip(shape, f.shape)):
        f = ndi.zoom(f, [s / m for s, m in zip(shape, f.shape)], order=1, mode="nearest",
                     grid_mode=True)
    f = np.ascontiguousarray(f[tuple(slice(0, int(s)) for s in shape)], dtype=np.float32)
    f -= f.mean()
    std = float(f.std())
    return f / std if std > 0 else f


def _cap_slope(height: np.ndarray, cap: float) -> np.ndarray:
    """``height`` (a 2-D height field) scaled down so its steepest slope is at most ``cap``."""
    gp, gq = np.gradient(height)
    steepest = float(np.sqrt(gp * gp + gq * gq).max()) if height.size else 0.0
    return height * np.float32(cap / steepest) if steepest > cap else height


#: Generator variants: ``"a"`` (the demo data the project is tuned on) and
#: ``"b"`` (held out for checking generalisation: thinner sheets packed
#: closer, brighter and noisier background, stronger uneven lighting, more
#: warp, more debris, and the labelled surface farther off the ridge).
VARIANTS = ("a", "b")


def _scroll_style(seed: int, scroll: str, variant: str = "a") -> dict[str, float]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "b":
        r = _seed_of("style-b", seed, scroll)
        thickness = float(r.uniform(4.5, 7.0))
        return {
            "thickness": thickness,
            "thick_lo": thickness - 1.5,
            "thick_hi": thickness + 1.5,
            "gap": float(r.uniform(5.0, 9.0)),
            "background": float(r.uniform(38.0, 58.0)),
            "peak": float(r.uniform(95.0, 125.0)),
            "noise": float(r.uniform(17.0, 24.0)),
            "fibre": float(r.uniform(0.28, 0.42)),
            "illum": float(r.uniform(0.38, 0.55)),
            "warp": float(r.uniform(0.14, 0.22)),
            "offset": float(r.uniform(2.0, 2.6)),
            "debris": 2.0,
        }
    r = _seed_of("style", seed, scroll)
    return {
        "thickness": float(r.uniform(6.0, 9.5)),
        "gap": float(r.uniform(8.0, 15.0)),
        "background": float(r.uniform(22.0, 40.0)),
        "peak": float(r.uniform(100.0, 135.0)),
        "noise": float(r.uniform(11.0, 18.0)),
        "fibre": float(r.uniform(0.18, 0.32)),
        "illum": float(r.uniform(0.20, 0.35)),
        "warp": float(r.uniform(0.08, 0.16)),
        "offset": float(r.uniform(1.3, 2.0)),
    }


# ----------------------------------------------------------------------
# one volume
# ----------------------------------------------------------------------
def make_volume(
    shape: Sequence[int],
    *,
    seed: int = 47,
    style: dict[str, float] | None = None,
    label_2_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one scroll-like CT chunk and its label.

    Parameters
    ----------
    shape : sequence of 3 int
        (Z, Y, X), every edge >= 16.
    seed : int
        Random seed; the same seed gives the same arrays.
    style : dict, optional
        Scroll style (see ``_scroll_style``); drawn from ``seed`` if omitted.
    label_2_fraction : float, optional
        Target share of ignore voxels (border included), in [0.5, 0.7] by
        default drawn from ``seed``; the border alone sets a floor.

    Returns
    -------
    (image, label) : tuple of numpy.ndarray
        uint8 (Z, Y, X); label values 0, 1, 2.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < _MIN_EDGE:
        raise ValueError(f"shape must be 3 edges >= {_MIN_EDGE}, got {shape!r}")
    rng = _seed_of("volume", seed, *shape)
    st = dict(style) if style is not None else _scroll_style(seed, "solo")

    # canonical frame: axis 1 is the sheet normal; permuted at the end
    normal_axis = int(rng.integers(0, 3))
    order = [a for a in range(3) if a != normal_axis]
    canon = (shape[order[0]], shape[normal_axis], shape[order[1]])
    P, N, Q = canon

    # shared warp of the stack: low-frequency winding + tilt + bending
    pp = np.linspace(-1.0, 1.0, P, dtype=np.float32)[:, None]
    qq = np.linspace(-1.0, 1.0, Q, dtype=np.float32)[None, :]
    wind = _smooth_field(rng, (P, Q), 2.0) * (st["warp"] * N)
    tilt = (rng.uniform(-0.25, 0.25) * pp + rng.uniform(-0.25, 0.25) * qq) * (0.5 * N)
    bend = rng.uniform(-0.15, 0.15) * (pp**2 + qq**2) * N
    shared = _cap_slope((wind + tilt + bend).astype(np.float32), _MAX_SHARED_SLOPE)

    thick_mean, gap_mean = st["thickness"], st["gap"]
    lo = -float(shared.max()) - 2 * (thick_mean + gap_mean)
    hi = N - float(shared.min()) + 2 * (thick_mean + gap_mean)
    centres, thicks = [], []
    c = lo + rng.uniform(0, thick_mean + gap_mean)
    while c < hi:
        t = float(np.clip(rng.normal(thick_mean, 0.8), st.get("thick_lo", 6.0), st.get("thick_hi", 10.0)))
        centres.append(c)
        thicks.append(t)
        c += t + float(rng.uniform(0.45, 1.55)) * gap_mean

    # per-sheet surfaces y_k(p, q), kept in order (sheets touch, never cross).
    # The spacing is kept along the sheet's normal, not along the axis: where
    # the stack is steep a vertical spacing would bring the sheets (and their
    # labelled layers) closer than their thickness, and the labelled layers
    # of neighbours would merge in patches — hundreds of spurious tunnels per
    # volume, where real labels have essentially none.
    surfaces = []
    prev = None
    for k, (ck, tk) in enumerate(zip(centres, thicks)):
        wobble = _cap_slope(_smooth_field(rng, (P, Q), 3.0) * float(rng.uniform(1.5, 3.5)),
                            _MAX_WOBBLE_SLOPE)
        yk = (ck + shared + wobble).astype(np.float32)
        if prev is not None:  # prev's stretch: its normal's length per unit of the axis
            spacing = max(0.5 * (prev[1] + tk), _LABEL_SPACING)
            np.maximum(yk, prev[0] + spacing * prev[2], out=yk)
        gp, gq = np.gradient(yk)
        prev = (yk, tk, np.sqrt(1.0 + gp * gp + gq * gq))
        surfaces.append(prev)

    # Sheets never cross, so every voxel lies between two consecutive
    # surfaces: only those two shape its intensity and label.  Index the
    # sheet just above each voxel (sentinels at -inf / +inf), then gather.
    K = len(surfaces)
    ys = np.empty((K + 2, P, Q), np.float32)
    inv = np.empty((K + 2, P, Q), np.float32)
    tks = np.empty(K + 2, np.float32)
    ys[0], ys[-1] = -1e6, 1e6
    inv[0], inv[-1] = 1.0, 1.0
    tks[0], tks[-1] = thick_mean, thick_mean
    for k, (yk, tk, stretch) in enumerate(surfaces, start=1):
        ys[k] = yk
        inv[k] = 1.0 / stretch
        tks[k] = tk
    yy = np.arange(N, dtype=np.float32)[None, :, None]
    above = np.zeros(canon, np.int32)  # index of the first surface above the voxel
    for k in range(K + 2):
        above += yy > ys[k][:, None, :]
    col = (np.arange(P, dtype=np.int32)[:, None, None] * Q
           + np.arange(Q, dtype=np.int32)[None, None, :])
    flat_above = above * np.int32(P * Q) + col
    del above
    flat_below = flat_above - np.int32(P * Q)
    ys_f, inv_f = ys.reshape(-1), inv.reshape(-1)
    tk_f = np.repeat(tks, P * Q)
    # signed normal distances: >= 0 above the lower sheet (its recto side),
    # <= 0 below the upper sheet (its verso side)
    s_lo = (yy - ys_f[flat_below]) * inv_f[flat_below]
    s_hi = (yy - ys_f[flat_above]) * inv_f[flat_above]
    # asymmetric ridge: steep on the recto (+) side, slow on the verso side
    density = np.exp(-0.5 * (s_lo / (0.26 * tk_f[flat_below])) ** 2)
    np.maximum(density, np.exp(-0.5 * (s_hi / (0.42 * tk_f[flat_above])) ** 2), out=density)
    del flat_above, flat_below, tk_f
    offset = st["offset"]
    label1 = (np.abs(s_lo - offset) < 1.5) | (np.abs(s_hi - offset) < 1.5)
    recto = s_lo < -s_hi  # nearer the lower sheet: its recto side
    del s_lo, s_hi

    # fibre texture: recto fibres along p, verso fibres along q
    fib_p = ndi.gaussian_filter(rng.standard_normal(canon, dtype=np.float32), (4.0, 0.6, 0.8))
    fib_q = ndi.gaussian_filter(rng.standard_normal(canon, dtype=np.float32), (0.8, 0.6, 4.0))
    fib_p /= max(float(fib_p.std()), 1e-6)
    fib_q /= max(float(fib_q.std()), 1e-6)
    fibre = np.where(recto, fib_p, fib_q)
    del fib_p, fib_q, recto

    bg, peak = st["background"], st["peak"]
    illum = 1.0 + st["illum"] * _smooth_field(rng, canon, 1.5)
    img = bg * (0.85 + 0.15 * illum) + (peak - bg) * density * illum * (1.0 + st["fibre"] * fibre)
    del fibre, illum, density

    # bright debris (not labelled)
    n_debris = max(3, int(st.get("debris", 1.0) * P * N * Q / 12000))
    for _ in range(n_debris):
        r = rng.uniform(0.8, 3.5, size=3)
        ctr = rng.uniform(0, 1, size=3) * np.array(canon)
        lo_i = np.maximum(np.floor(ctr - r - 1).astype(int), 0)
        hi_i = np.minimum(np.ceil(ctr + r + 1).astype(int), np.array(canon))
        if np.any(hi_i <= lo_i):
            continue
        sl = tuple(slice(a, b) for a, b in zip(lo_i, hi_i))
        grids = np.ogrid[sl]
        d2 = sum(((g - c0) / rr) ** 2 for g, c0, rr in zip(grids, ctr, r))
        blob = np.exp(-2.0 * d2).astype(np.float32)
        np.maximum(img[sl], float(rng.uniform(185, 255)) * blob, out=img[sl])

    img = ndi.gaussian_filter(img, 0.7)
    img += rng.standard_normal(canon, dtype=np.float32) * np.float32(st["noise"])
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    del img

    # label: 2 on the border and on unannotated regions, 1 on the surfaces
    frac2 = float(label_2_fraction) if label_2_fraction is not None else float(rng.uniform(0.5, 0.7))
    label = np.where(label1, np.uint8(1), np.uint8(0))
    interior = np.zeros(canon, bool)
    b = _BORDER
    interior[b:-b, b:-b, b:-b] = True
    n_int = int(interior.sum())
    n_tot = P * N * Q
    need_2_in_interior = int(round(frac2 * n_tot)) - (n_tot - n_int)
    if need_2_in_interior > 0:
        field = _smooth_field(rng, canon, 1.2)
        vals = field[interior]
        kth = min(max(need_2_in_interior, 1), vals.size) - 1
        thresh = np.partition(vals, kth)[kth]
        unannotated = (field <= thresh) & interior
        label[unannotated] = 2
    label[~interior] = 2

    # back to (Z, Y, X): canonical axes are (order[0], normal_axis, order[1])
    perm = np.argsort([order[0], normal_axis, order[1]])
    image = np.ascontiguousarray(image.transpose(perm))
    label = np.ascontiguousarray(label.transpose(perm))
    if rng.random() < 0.5:  # the recto side faces either way
        flip_axis = normal_axis
        image = np.ascontiguousarray(np.flip(image, flip_axis))
        label = np.ascontiguousarray(np.flip(label, flip_axis))
    return image, label


# ----------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------
def _unique_ids(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        digits = int(rng.integers(6, 11))
        vid = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
        if vid not in seen:
            seen.add(vid)
            out.append(vid)
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of ``src`` (replacing ``dst``), a copy where the file system refuses links."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_text(path: Path, text: str) -> None:
    write_text(path, text, newline="")


def _csv_text(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "scroll_id"])
    w.writerows(rows)
    return buf.getvalue()


def generate_demo_dataset(
    out: str | os.PathLike[str],
    *,
    n_train: int = 12,
    n_test: int = 2,
    shape: ShapeArg = None,
    seed: int = 47,
    variant: str = "a",
    on_progress: Callable[[int, int, str], None] | None = None,
    shapes: Sequence[tuple[ShapeArg | str, int]] | None = None,
    scrolls: Sequence[tuple[str, int]] | None = None,
    distinct: int = 0,
    n_ghost: int = 2,
    n_deprecated: int = 2,
) -> Path:
    """Write a demo dataset with the competition's layout.

    Parameters
    ----------
    out : str or path-like
        Destination folder (created; existing files of the same names are
        replaced).
    n_train : int
        Training pairs (>= 1).  Scrolls: 3, or up to 6 when ``n_train``
        allows at least 4 volumes each.
    n_test : int
        Test volumes (>= 0); their labels go to ``test_labels_hidden/``.
    shape : int, (Z, Y, X) or None
        None: mixed sizes, mostly 80³ with some 64³ and one 96³ (a full
        demo run takes a few minutes on 2 cores); an int: cubes of that
        edge; a tuple: that shape.  ``320`` gives competition-size volumes.
    seed : int
        The same seed gives byte-identical files.
    variant : {"a", "b"}
        The generator variant (:data:`VARIANTS`): ``"a"`` the demo data,
        ``"b"`` a held-out variant for checking generalisation.
    on_progress : callable, optional
        ``on_progress(done, total, what)`` after each volume written.
    shapes : sequence of (shape, count), optional
        The training pairs' shapes by count (the counts sum to ``n_train``),
        in a seeded random order, e.g. ``[(320, 738), (256, 47), (384, 1)]``
        (the real dataset); test volumes take the most common one.  Replaces
        ``shape``.
    scrolls : sequence of (scroll id, count), optional
        Scrolls by count, e.g. the real ``[("34117", 382), ("35360", 176),
        ...]``.  Counts summing to ``n_train`` are the training pairs'; counts
        summing to ``n_train + n_ghost`` are ``train.csv``'s rows (the real
        counts: 806 rows = 786 pairs + 20 without files), shared out between
        pairs and rows without files.  Test volumes (and, in the first case,
        rows without files) draw theirs in the same proportions.  Default: 3
        to 6 of :data:`SCROLL_IDS` as before.
    distinct : int
        0: every volume generated.  N > 0: at most about N distinct volumes
        (at least one per split, shape and scroll, shared out by their counts),
        every other id a hard link (a copy where links fail) of one of its own
        split, shape and scroll: timing and memory at scale for a fraction of
        the generation time — the dataset's statistics are then those of the
        distinct volumes.
    n_ghost : int
        ``train.csv`` rows without files (the real csv has 20).
    n_deprecated : int
        Pairs in ``deprecated_train_images/`` / ``deprecated_train_labels/``
        (the real dataset has 20).

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    ValueError
        ``n_train`` < 1, ``n_test`` < 0, a bad ``shape``, ``shapes`` or
        ``scrolls`` (counts not summing to ``n_train``), or negative
        ``distinct`` / ``n_ghost`` / ``n_deprecated``.
    """
    if int(n_train) < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train!r}")
    if int(n_test) < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test!r}")
    if shape is not None:
        _as_shape(shape, 0, "train")  # validate early
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, value in (("distinct", distinct), ("n_ghost", n_ghost), ("n_deprecated", n_deprecated)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    train_shapes: list[tuple[int, int, int]] | None = None
    if shapes is not None:
        parsed = [(_as_shape(parse_shape(str(k)) if isinstance(k, str) else k, 0, "train"), int(c))
                  for k, c in shapes]
        train_shapes = _spread(parsed, int(n_train), _seed_of("shapes", seed), "shapes")
        test_shape = max(parsed, key=lambda kc: kc[1])[0]
    if scrolls is not None:
        scrolls = [(str(k), int(c)) for k, c in scrolls]
        if not scrolls or any(c < 1 for _, c in scrolls):
            raise ValueError(f"scrolls must be (scroll id, count >= 1) pairs, got {scrolls!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = _seed_of("dataset", seed)
    n_ghost = int(n_ghost)
    n_dep = int(n_deprecated)
    ids = _unique_ids(rng, n_train + n_test + n_ghost + n_dep)
    train_ids = ids[:n_train]
    test_ids = ids[n_train : n_train + n_test]
    ghost_ids = ids[n_train + n_test : n_train + n_test + n_ghost]
    dep_ids = ids[n_train + n_test + n_ghost :]

    if scrolls is None:
        n_scrolls = int(min(len(SCROLL_IDS), max(3, n_train // 4)))
        scroll_ids = list(SCROLL_IDS[:n_scrolls])
        weights = np.linspace(2.0, 1.0, n_scrolls)
        weights /= weights.sum()
        train_scroll = [
            scroll_ids[i] if i < n_scrolls else scroll_ids[int(rng.choice(n_scrolls, p=weights))]
            for i in range(n_train)
        ]
        test_scroll = [scroll_ids[int(rng.integers(0, n_scrolls))] for _ in range(n_test)]
        ghost_scroll = [scroll_ids[int(rng.integers(0, n_scrolls))] for _ in range(n_ghost)]
    else:
        scroll_ids = [k for k, _ in scrolls]
        weights = np.array([c for _, c in scrolls], float)
        weights /= weights.sum()
        srng = _seed_of("scroll-draws", seed)
        if sum(c for _, c in scrolls) == n_train + n_ghost and n_ghost:
            # the counts of train.csv's rows (the real ones: 806 = 786 pairs + 20 rows without files)
            rows = _spread(scrolls, n_train + n_ghost, _seed_of("scrolls", seed), "scrolls")
            train_scroll, ghost_scroll = rows[:n_train], rows[n_train:]
        else:
            train_scroll = _spread(scrolls, int(n_train), _seed_of("scrolls", seed), "scrolls",
                                   also=f" (nor {n_train + n_ghost} train.csv rows with --ghost-rows)")
            ghost_scroll = [scroll_ids[int(srng.choice(len(scroll_ids), p=weights))] for _ in range(n_ghost)]
        test_scroll = [scroll_ids[int(srng.choice(len(scroll_ids), p=weights))] for _ in range(n_test)]
    styles = {s: _scroll_style(seed, s, variant) for s in scroll_ids}

    def shape_of(i: int, split: str) -> tuple[int, int, int]:
        if train_shapes is None:
            return _as_shape(shape, i, split)
        return train_shapes[i] if split == "train" else test_shape

    # with ``distinct``: the pool of each (split, shape, scroll) group, its size shared out by the group sizes
    groups: dict[tuple, list[int]] = {}
    for split, id_scrolls in (("train", train_scroll), ("test", test_scroll)):
        for i, sc in enumerate(id_scrolls):
            groups.setdefault((split, shape_of(i, split), sc), []).append(i)
    n_all = n_train + n_test
    pool_size = {g: (len(m) if not distinct else max(1, min(len(m), round(int(distinct) * len(m) / n_all))))
                 for g, m in groups.items()}
    source: dict[tuple[str, int], int] = {}  # (split, index) -> index of the volume it repeats
    for group, members in groups.items():
        for j, i in enumerate(members):
            source[(group[0], i)] = members[j % pool_size[group]]

    total = n_train + n_test + n_dep
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, what)

    for split, ids, id_scrolls, label_dir in (
        ("train", train_ids, train_scroll, "train_labels"),
        ("test", test_ids, test_scroll, "test_labels_hidden"),
    ):
        for i, (vid, sc) in enumerate(zip(ids, id_scrolls)):
            first = source[(split, i)]
            if first != i:  # a repeat of an earlier volume of its group
                for folder in (f"{split}_images", label_dir):
                    _link_or_copy(root / folder / f"{ids[first]}.tif", root / folder / f"{vid}.tif")
                tick(f"{split} {vid} (= {ids[first]})")
                continue
            img, lab = make_volume(
                shape_of(i, split), seed=int(_seed_of("vol", seed, split, i).integers(2**31)),
                style=styles[sc],
            )
            write_volume(root / f"{split}_images" / f"{vid}.tif", img)
            write_volume(root / label_dir / f"{vid}.tif", lab)
            tick(f"{split} {vid}")
    (root / "test_images").mkdir(exist_ok=True)
    for i, vid in enumerate(dep_ids):
        img, lab = make_volume(
            (32, 32, 32), seed=int(_seed_of("vol", seed, "deprecated", i).integers(2**31)),
            style=styles[scroll_ids[0]],
        )
        lab = (lab == 1).astype(np.uint8)  # older release: labels only {0, 1}
        write_volume(root / "deprecated_train_images" / f"{vid}.tif", img)
        write_volume(root / "deprecated_train_labels" / f"{vid}.tif", lab)
        tick(f"deprecated {vid}")

    def by_id(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return sorted(rows, key=lambda r: int(r[0]))

    _write_text(
        root / "train.csv",
        _csv_text(by_id(list(zip(train_ids, train_scroll)) + list(zip(ghost_ids, ghost_scroll)))),
    )
    _write_text(root / "test.csv", _csv_text(by_id(list(zip(test_ids, test_scroll)))))
    _write_text(
        root / "test_labels_hidden" / "README.txt",
        "Demo-only extra: labels of the demo test volumes, for a local score.\n"
        "The competition dataset has no such folder.\n",
    )
    return root


def ensure_demo_dataset(root: str | os.PathLike[str] | None = None) -> Path:
    """Generate the default demo dataset unless ``<root>/train.csv`` exists.

    Parameters
    ----------
    root : str or path-like, optional
        Defaults to :func:`nx47_pipeline.data.discovery.default_demo_root`.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    if root is None:
        root = default_demo_root()
    root = Path(root)
    if not (root / "train.csv").is_file():
        generate_demo_dataset(root)
    return root
