#!/usr/bin/env python
"""Write the Betti-matching oracle fixture: binary 3D pairs and their counts.

The fixture (``tests/fixtures/betti_oracle/``) lets the test suite prove that
NX47's own Betti-matching implementation gives exactly the counts of the
reference implementation, Betti-Matching-3D, without building it in CI.  This
script is the only place that calls the reference; it runs where a built
``betti_matching`` module can be imported (``--oracle-path``), e.g.::

    /path/to/venv/bin/python scripts/oracle/make_betti_fixture.py \\
        --oracle-path /tmp/bm/build --out tests/fixtures/betti_oracle

It needs numpy, scipy and scikit-image in the interpreter that runs it.  The
six "demo" cases come from :mod:`nx47_pipeline.data.demo`, generated in a
subprocess (the repository's ``.venv`` python when it can import the module,
else this interpreter with the repository on ``PYTHONPATH``).

The oracle is called as the competition metric calls it: a prediction ``P``
and a label ``G`` (boolean, same shape) are cut into a 2x2x2 grid of octants,
each axis of length ``n`` at ``h = (n + 1) // 2`` (slices ``[0:h]`` and
``[h:n]``); for every octant with no zero-length axis::

    r = bm.compute_matching(np.ascontiguousarray(1.0 - P_oct.astype(np.float64)),
                            np.ascontiguousarray(1.0 - G_oct.astype(np.float64)))

and, per homology dimension ``k``, ``m_k`` = matched pairs, ``p_k = m_k +``
unmatched pairs of input 1 (the prediction), ``g_k = m_k +`` unmatched pairs
of input 2 (the label).  The same call on the whole pair (no split) is stored
as ``whole``.

Outputs: ``volumes.npz`` (``p{i}``/``g{i}`` = ``np.packbits(mask.ravel())``)
and ``counts.json`` (see the fixture's README.md).  Every case is seeded; the
same library versions give the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[2]
ORACLE_COMMIT = "50d7379"

Counts = list[list[int]]  # [[m0, p0, g0], [m1, p1, g1], [m2, p2, g2]]


# ----------------------------------------------------------------------
# the oracle, called as the metric calls it
# ----------------------------------------------------------------------
def half_slices(n: int) -> tuple[slice, slice]:
    h = (n + 1) // 2
    return slice(0, h), slice(h, n)


def oracle_counts(bm, P: np.ndarray, G: np.ndarray) -> Counts:
    """``[[m, p, g] for k in 0, 1, 2]`` of one pair (no split)."""
    if P.shape != G.shape:
        raise ValueError(f"shapes differ: {P.shape} vs {G.shape}")
    if min(P.shape) == 0:
        return [[0, 0, 0] for _ in range(3)]
    a = np.ascontiguousarray(1.0 - P.astype(np.float64))
    b = np.ascontiguousarray(1.0 - G.astype(np.float64))
    r = bm.compute_matching(a, b)
    out: Counts = []
    for k in range(3):
        m = len(r.input1_matched_birth_coordinates[k])
        u1 = len(r.input1_unmatched_birth_coordinates[k])
        u2 = len(r.input2_unmatched_birth_coordinates[k])
        # the two ways to read the result must agree
        checks = (
            m == len(r.input2_matched_birth_coordinates[k]),
            m == len(r.input1_matched_death_coordinates[k]),
            m == int(r.num_matched[k]),
            u1 == int(r.num_unmatched_input1[k]),
            u2 == int(r.num_unmatched_input2[k]),
        )
        if not all(checks):
            raise RuntimeError(
                f"oracle result inconsistent in dim {k}: lengths m={m} u1={u1} u2={u2}, "
                f"num_matched={list(r.num_matched)}, num_unmatched_input1="
                f"{list(r.num_unmatched_input1)}, num_unmatched_input2={list(r.num_unmatched_input2)}"
            )
        out.append([m, m + u1, m + u2])
    return out


def octant_counts(bm, P: np.ndarray, G: np.ndarray) -> list[Counts]:
    """Counts of the 8 octants, z-half outermost, then y-half, then x-half."""
    out = []
    for sz in half_slices(P.shape[0]):
        for sy in half_slices(P.shape[1]):
            for sx in half_slices(P.shape[2]):
                po, go = P[sz, sy, sx], G[sz, sy, sx]
                if min(po.shape) == 0:
                    out.append([[0, 0, 0] for _ in range(3)])
                else:
                    out.append(oracle_counts(bm, po, go))
    return out


def sum_counts(parts: list[Counts]) -> Counts:
    return [[sum(c[k][j] for c in parts) for j in range(3)] for k in range(3)]


# ----------------------------------------------------------------------
# shape helpers
# ----------------------------------------------------------------------
def grid(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.indices(shape, dtype=np.float64)
    return z, y, x


def rand_shape(rng, lo=6, hi=40) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi + 1, size=3))


def smooth_field(rng, shape, sigma) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    s = f.std()
    return (f - f.mean()) / (s if s > 0 else 1.0)


def rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def ball(shape, centre, radius) -> np.ndarray:
    z, y, x = grid(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def torus(shape, centre, R, r, rot=None) -> np.ndarray:
    """Solid torus: tube radius ``r`` around a circle of radius ``R``."""
    z, y, x = grid(shape)
    p = np.stack([z - centre[0], y - centre[1], x - centre[2]], axis=-1)
    if rot is not None:
        p = p @ rot.T
    rho = np.sqrt(p[..., 1] ** 2 + p[..., 2] ** 2)
    return (rho - R) ** 2 + p[..., 0] ** 2 <= r**2


def square_ring(shape, axis, pos, lo, hi, width=1) -> np.ndarray:
    """A square frame in the plane ``axis = pos`` (a 1-cycle)."""
    m = np.zeros(shape, bool)
    other = [a for a in range(3) if a != axis]
    sl = [slice(None)] * 3
    sl[axis] = slice(pos, pos + width)
    frame = np.zeros((shape[other[0]], shape[other[1]]), bool)
    frame[lo[0]:hi[0], lo[1]:hi[1]] = True
    frame[lo[0] + width:hi[0] - width, lo[1] + width:hi[1] - width] = False
    plane = np.moveaxis(m, axis, 0)[pos:pos + width]
    plane[:] = frame
    return m


def shell(shape, centre, r_out, r_in) -> np.ndarray:
    return ball(shape, centre, r_out) & ~ball(shape, centre, r_in)


def hollow_box(shape, lo, hi, wall=1) -> np.ndarray:
    lo_i = [a + wall for a in lo]
    hi_i = [b - wall for b in hi]
    return box(shape, lo, hi) & ~box(shape, lo_i, hi_i)


def sheet(rng, shape, axis, thick, wavy=0.0, pos=None, periods=1.5) -> np.ndarray:
    """A surface ``axis = f(other two)`` of ``thick`` voxels (wavy if ``wavy`` > 0)."""
    z, y, x = grid(shape)
    c = [z, y, x]
    u, v = [c[a] for a in range(3) if a != axis]
    n = shape[axis]
    if pos is None:
        pos = rng.uniform(0.3, 0.7) * (n - 1)
    nu = max(shape[(axis + 1) % 3], 2)
    ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
    surf = pos + wavy * np.sin(2 * np.pi * periods * u / nu + ph1) * np.cos(
        2 * np.pi * periods * v / nu + ph2)
    d = c[axis] - surf
    return (d >= -thick / 2.0) & (d < thick / 2.0)


def punch(rng, m, n_holes, rmax=2.0, inside=True) -> np.ndarray:
    """Remove ``n_holes`` small balls centred on foreground voxels."""
    out = m.copy()
    idx = np.argwhere(m) if inside else np.argwhere(np.ones_like(m))
    if len(idx) == 0:
        return out
    for _ in range(n_holes):
        c = idx[rng.integers(len(idx))]
        r = rng.uniform(0.5, rmax)
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, m.shape)
        sub = tuple(slice(a, b) for a, b in zip(lo, hi))
        zz, yy, xx = np.ogrid[sub]
        out[sub] &= ~((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r)
    return out


def add_blobs(rng, m, n, rmax=2.5) -> np.ndarray:
    out = m.copy()
    for _ in range(n):
        c = rng.uniform(0, 1, 3) * (np.array(m.shape) - 1)
        out |= ball(m.shape, c, rng.uniform(0.6, rmax))
    return out


def shift(m, d) -> np.ndarray:
    """Shift by integer offsets ``d`` (zero fill, no wrap)."""
    out = np.zeros_like(m)
    src, dst = [], []
    for n, k in zip(m.shape, d):
        k = int(k)
        if abs(k) >= n:
            return out
        src.append(slice(max(0, -k), n - max(0, k)))
        dst.append(slice(max(0, k), n - max(0, -k)))
    out[tuple(dst)] = m[tuple(src)]
    return out


def flip_voxels(rng, m, rate) -> np.ndarray:
    return m ^ (rng.random(m.shape) < rate)


def cut_boxes(rng, m, n, size=(2, 6)) -> np.ndarray:
    out = m.copy()
    for _ in range(n):
        s = rng.integers(size[0], size[1] + 1, 3)
        lo = [int(rng.integers(0, max(1, d - k + 1))) for d, k in zip(m.shape, s)]
        out[lo[0]:lo[0] + s[0], lo[1]:lo[1] + s[1], lo[2]:lo[2] + s[2]] = False
    return out


def scattered(rng, shape, n, size_lo, size_hi, make, p_same=0.4, p_only=0.2):
    """``n`` small objects ``make(shape, corner, size)`` at random places.

    Each object goes into both masks (probability ``p_same``), into only one
    of them (``p_only``, split evenly between label-only and
    prediction-only), or into the label with the prediction getting a copy
    shifted by ``1 + size // 4`` voxels along one axis, so that small holes
    (cavities, ring openings) of the two no longer overlap.
    """
    G = np.zeros(shape, bool)
    P = np.zeros(shape, bool)
    for _ in range(n):
        size = int(rng.integers(size_lo, size_hi + 1))
        room = [max(1, d - size - 2) for d in shape]
        corner = [int(rng.integers(0, r)) for r in room]
        obj = make(shape, corner, size)
        u = rng.random()
        if u < p_same:
            G |= obj
            P |= obj
        elif u < p_same + p_only / 2:
            G |= obj
        elif u < p_same + p_only:
            P |= obj
        else:
            G |= obj
            d = [0, 0, 0]
            d[int(rng.integers(3))] = int(rng.choice([-1, 1])) * (1 + size // 4)
            P |= shift(obj, d)
    return P, G


def small_hollow_cube(shape, corner, size):
    hi = [c + size for c in corner]
    return hollow_box(shape, corner, hi, 1)


def cube_one_hole(shape, corner, size):
    """A solid cube with a single-voxel cavity at its centre (size >= 3)."""
    m = box(shape, corner, [c + size for c in corner])
    c = tuple(min(v + size // 2, n - 1) for v, n in zip(corner, shape))
    m[c] = False
    return m


def hollow_ball(shape, corner, size):
    """A ball of diameter ``size`` with a cavity 2 voxels under its surface."""
    c = np.array(corner, float) + (size - 1) / 2
    return shell(shape, c, size / 2, size / 2 - 2.0)


def small_ring(rng):
    axis = int(rng.integers(3))

    def make(shape, corner, size):
        o = [a for a in range(3) if a != axis]
        return square_ring(shape, axis, corner[axis], [corner[o[0]], corner[o[1]]],
                           [corner[o[0]] + size, corner[o[1]] + size], 1)
    return make


def ball26():
    return ndi.generate_binary_structure(3, 3)


def ball6():
    return ndi.generate_binary_structure(3, 1)


# ----------------------------------------------------------------------
# a library of "label" structures used by several categories
# ----------------------------------------------------------------------
def structure(rng, kind: str, shape) -> np.ndarray:
    sh = np.array(shape, float)
    ctr = (sh - 1) / 2 + rng.uniform(-1.5, 1.5, 3)
    if kind == "blobs":
        f = smooth_field(rng, shape, rng.uniform(1.0, 2.5))
        return f > rng.uniform(-0.6, 0.8)
    if kind == "torus":
        R = max(2.5, rng.uniform(0.22, 0.32) * min(sh))
        return torus(shape, ctr, R, rng.uniform(1.0, 1.8), rotation(rng))
    if kind == "cavity":  # a big shell (thick enough to enclose) and a few small ones
        r_out = max(3.5, rng.uniform(0.3, 0.45) * min(sh))
        m = shell(shape, ctr, r_out, r_out - rng.uniform(1.8, 3.0))
        make = (small_hollow_cube, cube_one_hole, hollow_ball)[int(rng.integers(3))]
        for _ in range(int(rng.integers(1, 6))):
            size = int(rng.integers(3 if make is not hollow_ball else 6, 8))
            corner = [int(rng.integers(0, max(1, d - size))) for d in shape]
            m |= make(shape, corner, size)
        return m
    if kind == "sheets":
        m = np.zeros(shape, bool)
        axis = int(rng.integers(3))
        for _ in range(int(rng.integers(1, 4))):
            m |= sheet(rng, shape, axis, rng.integers(1, 4), rng.uniform(0, 3))
        return punch(rng, m, int(rng.integers(0, 6)), 2.0)
    if kind == "porous":  # solid blobs with one-voxel pores (many small cavities)
        f = smooth_field(rng, shape, rng.uniform(1.8, 3.0))
        return (f > rng.uniform(-0.8, 0.0)) & (rng.random(shape) >= rng.uniform(0.02, 0.06))
    if kind == "mixed":
        m = structure(rng, "torus", shape) | structure(rng, "cavity", shape)
        return add_blobs(rng, m, int(rng.integers(1, 5)), 2.0)
    raise ValueError(kind)


KINDS = ("blobs", "torus", "cavity", "sheets", "porous", "mixed")


# ----------------------------------------------------------------------
# categories: each yields (name, P, G)
# ----------------------------------------------------------------------
Case = tuple[str, np.ndarray, np.ndarray]


def cat_random_blobs(rng) -> Iterator[Case]:
    levels = (-1.4, -1.1, -0.9, -0.5, -0.2, 0.0, 0.2, 0.5, 0.9)
    for i in range(36):
        shape = rand_shape(rng, 8, 36) if i % 9 else rand_shape(rng, 40, 64)
        sigma = float(rng.choice([0.8, 1.0, 1.3, 1.7, 2.2, 3.0]))
        f = smooth_field(rng, shape, sigma)
        tg = float(rng.choice(levels))
        mode = i % 3
        if mode == 0:  # same field, two thresholds
            tp = float(rng.choice(levels))
            P, G = f > tp, f > tg
        elif mode == 1:  # correlated field
            e = smooth_field(rng, shape, sigma)
            w = rng.uniform(0.2, 0.6)
            P, G = (np.sqrt(1 - w * w) * f + w * e) > tg + rng.uniform(-0.2, 0.2), f > tg
        else:  # independent fields
            P, G = smooth_field(rng, shape, sigma) > float(rng.choice(levels)), f > tg
        yield f"blobs_s{sigma:g}_t{tg:g}_m{mode}_{i}", P, G


def cat_sparse_voxels(rng) -> Iterator[Case]:
    dens = (0.01, 0.03, 0.08, 0.15, 0.25, 0.35, 0.5, 0.7, 0.85, 0.93)
    for i in range(20):
        shape = rand_shape(rng, 6, 26)
        d = dens[i % len(dens)]
        G = rng.random(shape) < d
        if i % 2:
            P = flip_voxels(rng, G, rng.uniform(0.02, 0.15))
        else:
            P = rng.random(shape) < dens[int(rng.integers(len(dens)))]
        yield f"sparse_d{d:g}_{i}", P, G


def cat_sheets_pinholes(rng) -> Iterator[Case]:
    for i in range(22):
        shape = rand_shape(rng, 8, 36)
        axis = int(rng.integers(3))
        thick = int(rng.integers(1, 4))
        wavy = 0.0 if i % 3 == 0 else rng.uniform(0.8, 4.0)
        base = sheet(rng, shape, axis, thick, wavy)
        if i % 4 == 3:  # several parallel sheets
            base |= sheet(rng, shape, axis, thick, wavy, pos=rng.uniform(0.05, 0.25) * shape[axis])
        G = punch(rng, base, int(rng.integers(0, 8)), rng.uniform(0.8, 2.5))
        mode = i % 3
        if mode == 0:
            P = punch(rng, base, int(rng.integers(1, 8)), rng.uniform(0.8, 2.5))
        elif mode == 1:
            d = [0, 0, 0]
            d[axis] = int(rng.choice([-1, 1]))
            P = punch(rng, shift(base, d), int(rng.integers(0, 6)), 1.5)
        else:
            P = punch(rng, G, int(rng.integers(1, 5)), 1.5)
        yield f"sheets_ax{axis}_t{thick}_m{mode}_{i}", P, G


def touching_pair(rng, shape, n_sheets, touch_frac):
    """``n_sheets`` wavy sheets along one axis that touch where a field is high."""
    axis = int(rng.integers(3))
    z, y, x = grid(shape)
    c = [z, y, x]
    n = shape[axis]
    thick = int(rng.integers(1, 3))
    gap = max(2.0, (n - 2) / (n_sheets + 0.5))
    pos0 = rng.uniform(0.5, 1.5)
    m = np.zeros(shape, bool)
    wob = ndi.gaussian_filter(rng.standard_normal([shape[a] for a in range(3) if a != axis]), 2.0)
    wob /= max(wob.std(), 1e-9)
    wob = np.expand_dims(wob, axis)
    touch = wob > np.quantile(wob, 1 - touch_frac)
    for k in range(n_sheets):
        surf = pos0 + k * gap + 0.8 * np.sin(c[(axis + 1) % 3] / 3.0 + k)
        m |= (c[axis] - surf >= 0) & (c[axis] - surf < thick)
    # bridges between neighbouring sheets where the field is high
    bridge = np.zeros(shape, bool)
    for k in range(n_sheets - 1):
        lo = pos0 + k * gap
        bridge |= (c[axis] >= lo) & (c[axis] < lo + gap + thick) & touch
    return m, m | bridge, axis


def cat_touching_sheets(rng) -> Iterator[Case]:
    for i in range(18):
        shape = rand_shape(rng, 10, 36)
        ns = int(rng.integers(2, 5))
        sep, touched, _ = touching_pair(rng, shape, ns, rng.uniform(0.03, 0.25))
        mode = i % 3
        if mode == 0:  # label separate, prediction touching
            P, G = touched, sep
        elif mode == 1:  # both touching, in different places
            _, t2, _ = touching_pair(np.random.default_rng(int(rng.integers(2**31))), shape, ns,
                                      rng.uniform(0.03, 0.25))
            P, G = t2, touched
        else:  # label touching, prediction with holes
            P, G = punch(rng, touched, int(rng.integers(2, 8)), 1.8), touched
        yield f"touching_n{ns}_m{mode}_{i}", P, G


def cat_cavities(rng) -> Iterator[Case]:
    for i in range(32):
        mode = i % 8
        big = mode in (0, 1, 4)
        shape = rand_shape(rng, 24, 40) if big else rand_shape(rng, 10, 36)
        sh = np.array(shape, float)
        ctr = (sh - 1) / 2 + rng.uniform(-1, 1, 3)
        R = max(4.5, (min(sh) - 1) / 2 - 1.2)
        if big and i % 16 >= 8:  # inside one octant, so the split keeps the cavity
            lo, hi = [], []
            for n in shape:
                h = (n + 1) // 2
                a, b = (0, h) if rng.random() < 0.5 else (h, n)
                lo.append(a)
                hi.append(b)
            lo, hi = np.array(lo, float), np.array(hi, float)
            ctr = (lo + hi - 1) / 2
            R = max(4.5, (min(hi - lo) - 1) / 2 - 0.2)
        if mode == 6:  # small hollow cubes scattered, some shifted / missing
            P, G = scattered(rng, shape, int(rng.integers(4, 16)), 3, 5, small_hollow_cube)
            yield f"cavity_m{mode}_{i}", P, G
            continue
        if mode == 7:  # dense noise: many one-voxel cavities
            G = rng.random(shape) < rng.uniform(0.8, 0.95)
            P = rng.random(shape) < rng.uniform(0.8, 0.95) if i % 16 == 7 else flip_voxels(rng, G, 0.05)
            yield f"cavity_m{mode}_{i}", P, G
            continue
        if mode == 0:  # hollow ball vs hollow ball with offset (disjoint) cavity
            rc = max(1.0, 0.2 * R)
            G = ball(shape, ctr, R) & ~ball(shape, ctr, rc)
            d = np.zeros(3)
            d[int(rng.integers(3))] = rng.choice([-1, 1]) * min(2 * rc + 1, R - rc - 2)
            P = ball(shape, ctr, R) & ~ball(shape, ctr + d, rc)
        elif mode == 1:  # nested shells
            G = shell(shape, ctr, R, R - 2) | shell(shape, ctr, R * 0.5, R * 0.5 - 2)
            P = shell(shape, ctr, R, R - 2)
            if rng.random() < 0.5:
                P |= ball(shape, ctr, R * 0.25)
        elif mode == 2:  # hollow boxes, prediction's wall broken
            lo = rng.integers(0, 3, 3)
            hi = np.array(shape) - rng.integers(0, 3, 3)
            G = hollow_box(shape, lo, hi, int(rng.integers(1, 3)))
            P = punch(rng, G, int(rng.integers(1, 4)), 1.5)
            # small one-hole cubes floating in the cavity (some shared, some shifted)
            Pc, Gc = scattered(rng, shape, int(rng.integers(1, 6)), 3, 5, cube_one_hole, 0.4, 0.3)
            inner = box(shape, lo + 3, hi - 3)
            P |= Pc & inner
            G |= Gc & inner
        elif mode == 3:  # several small cavities in a solid
            G = box(shape, [1, 1, 1], [s - 1 for s in shape])
            P = G.copy()
            for _ in range(int(rng.integers(2, 7))):
                c = rng.uniform(2, np.array(shape) - 3)
                G &= ~ball(shape, c, rng.uniform(0.5, 2.0))
            for _ in range(int(rng.integers(2, 7))):
                c = rng.uniform(2, np.array(shape) - 3)
                P &= ~ball(shape, c, rng.uniform(0.5, 2.0))
        elif mode == 4:  # one big cavity vs two cavities
            G = ball(shape, ctr, R) & ~ball(shape, ctr, R - 2.2)
            d = np.zeros(3)
            d[int(rng.integers(3))] = R * 0.4
            rc = max(1.0, R * 0.3)
            P = ball(shape, ctr, R) & ~ball(shape, ctr + d, rc) & ~ball(shape, ctr - d, rc)
        else:  # shells of blobs: thresholded field with holes closed off
            sig = rng.uniform(0.8, 1.5)
            f = smooth_field(rng, shape, sig)
            G = f > -rng.uniform(0.9, 1.5)
            P = f + 0.5 * smooth_field(rng, shape, sig) > -rng.uniform(0.9, 1.5)
        yield f"cavity_m{mode}_{i}", P, G


def ring_chain(shape, start, axis_along, n, R, r) -> np.ndarray:
    """``n`` linked rings along one axis, alternating plane orientation."""
    m = np.zeros(shape, bool)
    perm_a = np.eye(3)
    for k in range(n):
        c = np.array(start, float)
        c[axis_along] += k * R * 1.6
        # torus normal alternates between the two axes perpendicular to axis_along
        others = [a for a in range(3) if a != axis_along]
        normal = others[k % 2]
        # rotation matrix mapping torus local z (index 0) to ``normal``
        order = [normal] + [a for a in range(3) if a != normal]
        rot = perm_a[order]
        m |= torus(shape, c, R, r, rot)
    return m


def cat_tori_rings(rng) -> Iterator[Case]:
    for i in range(32):
        shape = rand_shape(rng, 12, 40)
        sh = np.array(shape, float)
        ctr = (sh - 1) / 2 + rng.uniform(-1, 1, 3)
        R = max(3.0, rng.uniform(0.2, 0.3) * min(sh))
        r = rng.uniform(1.0, 1.6)
        mode = i % 8
        rot = rotation(rng)
        if mode in (6, 7):  # small square rings scattered, some shifted / missing
            P, G = scattered(rng, shape, int(rng.integers(4, 14)), 3, 6, small_ring(rng))
        elif mode == 0:  # torus vs offset torus
            G = torus(shape, ctr, R, r, rot)
            P = torus(shape, ctr + rng.uniform(-1, 1, 3) * R * 0.9, R, r, rot)
        elif mode == 1:  # ring vs broken ring
            G = torus(shape, ctr, R, r, rot)
            P = punch(rng, G, 1, 2.5)
        elif mode == 2:  # square frames
            axis = int(rng.integers(3))
            o = [shape[a] for a in range(3) if a != axis]
            lo = [int(rng.integers(0, 3)), int(rng.integers(0, 3))]
            hi = [o[0] - int(rng.integers(0, 3)), o[1] - int(rng.integers(0, 3))]
            pos = int(rng.integers(0, shape[axis]))
            G = square_ring(shape, axis, pos, lo, hi, int(rng.integers(1, 3)))
            P = square_ring(shape, axis, min(shape[axis] - 1, pos + int(rng.integers(0, 3))),
                            [lo[0] + 2, lo[1] + 2], [hi[0] + 1, hi[1] + 1], 1)
        elif mode == 3:  # chains of linked rings
            along = int(np.argmax(sh))
            Rc = max(2.5, min(0.3 * min(sh), sh[along] / 6.0))
            start = (sh - 1) / 2
            start[along] = Rc + 1
            n = max(2, int((sh[along] - 2 * Rc - 2) // (Rc * 1.6)) + 1)
            G = ring_chain(shape, start, along, n, Rc, rng.uniform(0.6, 1.1))
            P = punch(rng, G, int(rng.integers(0, 3)), 1.5) | add_blobs(rng, np.zeros_like(G), 2, 1.5)
        elif mode == 4:  # several rings, prediction rings of another radius
            G = np.zeros(shape, bool)
            P = np.zeros(shape, bool)
            for _ in range(int(rng.integers(2, 4))):
                c = rng.uniform(0.3, 0.7, 3) * (sh - 1)
                rr = rotation(rng)
                Rk = max(2.5, rng.uniform(0.12, 0.22) * min(sh))
                G |= torus(shape, c, Rk, r, rr)
                P |= torus(shape, c + rng.uniform(-1.5, 1.5, 3), Rk * rng.uniform(0.6, 1.3), r, rr)
        else:  # thick torus (genus 1 solid) vs its dilation / a double torus
            G = torus(shape, ctr, R, r + 0.6, rot)
            d = rot.T @ np.array([0.0, 0.0, 1.0])
            P = torus(shape, ctr - d * R, R, r + 0.6, rot) | torus(shape, ctr + d * R, R, r + 0.6, rot)
        yield f"torus_m{mode}_{i}", P, G


def cat_octant_crossing(rng) -> Iterator[Case]:
    for i in range(18):
        shape = rand_shape(rng, 9, 40)
        sh = np.array(shape, float)
        h = np.array([(n + 1) // 2 for n in shape], float)
        mode = i % 6
        if mode == 0:  # torus centred on the cut corner
            rot = rotation(rng)
            R = max(3.0, 0.3 * min(sh))
            G = torus(shape, h - 0.5, R, 1.0, rot)
            P = torus(shape, h - 0.5 + rng.uniform(-1, 1, 3), R, 1.0, rot)
        elif mode == 1:  # hollow ball across all octants
            R = max(3.5, 0.42 * min(sh))
            G = shell(shape, h - 0.5, R, R - 1.6)
            P = shell(shape, h - 0.5 + rng.uniform(-1, 1, 3), R, R - 1.6)
        elif mode == 2:  # sheet on / next to a cut plane
            axis = int(rng.integers(3))
            G = sheet(rng, shape, axis, 1, 0.0, pos=h[axis])
            P = sheet(rng, shape, axis, 1, 0.0, pos=h[axis] - 1)
            G, P = punch(rng, G, 3, 1.5), punch(rng, P, 3, 1.5)
        elif mode == 3:  # lines / rods crossing the cut
            G = np.zeros(shape, bool)
            P = np.zeros(shape, bool)
            for _ in range(int(rng.integers(3, 8))):
                a = int(rng.integers(3))
                c = [int(rng.integers(0, n)) for n in shape]
                sl = [slice(v, v + 1) for v in c]
                lo = int(rng.integers(0, int(h[a])))
                hi = int(rng.integers(int(h[a]), shape[a] + 1))
                sl[a] = slice(lo, hi)
                G[tuple(sl)] = True
                sl[a] = slice(lo + int(rng.integers(0, 2)), hi)
                P[tuple(sl)] = True
        elif mode == 4:  # blobs in a band around the cut planes
            f = smooth_field(rng, shape, 1.2)
            z, y, x = grid(shape)
            band = (np.abs(z - h[0] + 0.5) < 3) | (np.abs(y - h[1] + 0.5) < 3) | (np.abs(x - h[2] + 0.5) < 3)
            G = (f > 0.1) & band
            P = (f + 0.4 * smooth_field(rng, shape, 1.2) > 0.1) & band
        else:  # a ring that only closes through the neighbouring octant
            axis = int(rng.integers(3))
            o = [a for a in range(3) if a != axis]
            lo = [int(h[o[0]]) - 3, int(h[o[1]]) - 3]
            hi = [int(h[o[0]]) + 3, int(h[o[1]]) + 3]
            lo = [max(0, v) for v in lo]
            G = square_ring(shape, axis, int(h[axis]) - 1, lo, hi, 1)
            P = square_ring(shape, axis, int(h[axis]), lo, hi, 1)
        yield f"crossing_m{mode}_{i}", P, G


def cat_empty_full(rng) -> Iterator[Case]:
    for i in range(20):
        shape = rand_shape(rng, 6, 30)
        zero = np.zeros(shape, bool)
        one = np.ones(shape, bool)
        s = structure(rng, KINDS[i % len(KINDS)], shape)
        oct_masks = []
        for sz in half_slices(shape[0]):
            for sy in half_slices(shape[1]):
                for sx in half_slices(shape[2]):
                    m = zero.copy()
                    m[sz, sy, sx] = True
                    oct_masks.append(m)
        mode = i % 10
        if mode == 0:
            P, G, what = zero, zero, "both_empty"
        elif mode == 1:
            P, G, what = one, one, "both_full"
        elif mode == 2:
            P, G, what = zero, s, "pred_empty"
        elif mode == 3:
            P, G, what = s, zero, "label_empty"
        elif mode == 4:
            P, G, what = one, s, "pred_full"
        elif mode == 5:
            P, G, what = s, one, "label_full"
        elif mode == 6:  # content in some octants only
            keep = np.zeros(shape, bool)
            for m in oct_masks:
                if rng.random() < 0.4:
                    keep |= m
            P, G, what = s & keep, s & oct_masks[int(rng.integers(8))], "some_octants"
        elif mode == 7:  # octants alternately full and empty
            cb = np.zeros(shape, bool)
            for j, m in enumerate(oct_masks):
                if (j ^ (j >> 1) ^ (j >> 2)) & 1:
                    cb |= m
            P, G, what = cb, s | cb, "checker_octants"
        elif mode == 8:  # full with one hole vs full
            P = one.copy()
            P[tuple(int(rng.integers(1, max(2, n - 1))) for n in shape)] = False
            G, what = one, "full_one_hole"
        else:  # one octant full, the others empty vs structure
            P, G, what = oct_masks[int(rng.integers(8))], s, "one_octant_full"
        yield f"emptyfull_{what}_{i}", P, G


def cat_tiny(rng) -> Iterator[Case]:
    shapes = [(1, 1, 1), (1, 1, 7), (1, 9, 1), (2, 2, 2), (1, 7, 9), (3, 3, 3), (2, 5, 5),
              (1, 12, 12), (3, 1, 13), (2, 2, 17), (13, 2, 9), (3, 11, 3), (1, 2, 1), (2, 3, 1),
              (9, 9, 2), (3, 14, 15), (1, 16, 20), (2, 20, 18), (3, 3, 25), (15, 1, 15),
              (2, 1, 2), (3, 8, 1)]
    for i, shape in enumerate(shapes):
        if i % 3 == 0:
            G = rng.random(shape) < 0.5
            P = rng.random(shape) < 0.5
        elif i % 3 == 1:
            G = rng.random(shape) < 0.6
            P = flip_voxels(rng, G, 0.15)
        else:  # rings / frames in a thin slab where possible
            G = np.zeros(shape, bool)
            axis = int(np.argmin(shape))
            o = [shape[a] for a in range(3) if a != axis]
            if min(o) >= 3:
                G |= square_ring(shape, axis, 0, [0, 0], o, 1)
                if min(o) >= 7:
                    G |= square_ring(shape, axis, shape[axis] - 1, [2, 2], [o[0] - 2, o[1] - 2], 1)
            else:
                G = rng.random(shape) < 0.5
            P = flip_voxels(rng, G, 0.1)
        yield f"tiny_{'x'.join(map(str, shape))}_{i}", P, G


def cat_identical(rng) -> Iterator[Case]:
    for i in range(15):
        shape = rand_shape(rng, 6, 36)
        if i % 6 == 5:
            G = rng.random(shape) < rng.uniform(0.1, 0.8)
            kind = "noise"
        else:
            kind = KINDS[i % len(KINDS)]
            G = structure(rng, kind, shape)
        yield f"identical_{kind}_{i}", G.copy(), G


def cat_transformed(rng) -> Iterator[Case]:
    ops = ("shift", "dilate6", "dilate26", "erode6", "erode26", "punch")
    for i in range(30):
        shape = rand_shape(rng, 10, 36)
        kind = KINDS[i % len(KINDS)]
        G = structure(rng, kind, shape)
        op = ops[(i // len(KINDS) + i) % len(ops)]
        if op == "shift":
            d = [0, 0, 0]
            d[int(rng.integers(3))] = int(rng.choice([-3, -2, -1, 1, 2, 3]))
            if rng.random() < 0.4:
                d[int(rng.integers(3))] += int(rng.choice([-1, 1]))
            T = shift(G, d)
        elif op == "dilate6":
            T = ndi.binary_dilation(G, ball6())
        elif op == "dilate26":
            T = ndi.binary_dilation(G, ball26())
        elif op == "erode6":
            T = ndi.binary_erosion(G, ball6())
        elif op == "erode26":
            T = ndi.binary_erosion(G, ball26())
        else:
            T = punch(rng, G, int(rng.integers(2, 10)), rng.uniform(1.0, 2.5))
        P, G2 = (T, G) if i % 4 != 3 else (G, T)  # sometimes the label is the transformed copy
        yield f"transformed_{kind}_{op}{'_rev' if i % 4 == 3 else ''}_{i}", P, G2


def cat_label_noise(rng) -> Iterator[Case]:
    for i in range(28):
        shape = rand_shape(rng, 10, 40) if i % 7 else rand_shape(rng, 40, 60)
        kind = KINDS[i % len(KINDS)]
        G = structure(rng, kind, shape)
        mode = i % 4
        if mode == 0:
            P = flip_voxels(rng, G, rng.uniform(0.005, 0.06))
            what = "flip"
        elif mode == 1:
            P = cut_boxes(rng, G, int(rng.integers(2, 8)))
            what = "missing"
        elif mode == 2:
            P = add_blobs(rng, G, int(rng.integers(2, 10)), 2.5)
            what = "extra"
        else:
            P = add_blobs(rng, cut_boxes(rng, flip_voxels(rng, G, 0.02), 3), 4, 2.0)
            what = "all"
        yield f"labelnoise_{kind}_{what}_{i}", P, G


def cat_strict_mismatch(rng) -> Iterator[Case]:
    """Pairs built so matched < min(pred, label) in a chosen dimension."""
    for i in range(36):
        shape = rand_shape(rng, 14, 40)
        sh = np.array(shape, float)
        mode = i % 6
        if mode == 5:  # dim 2 (and 0): one porous solid, pores drawn twice, partly shared
            solid = smooth_field(rng, shape, rng.uniform(1.8, 3.0)) > rng.uniform(-0.8, 0.0)
            shared = rng.random(shape) < rng.uniform(0.005, 0.02)
            G = solid & ~shared & (rng.random(shape) >= rng.uniform(0.01, 0.04))
            P = solid & ~shared & (rng.random(shape) >= rng.uniform(0.01, 0.04))
            yield f"strict_pores_{i}", P, G
            continue
        if mode == 4:  # all three dims: hollow cubes, rings and blobs, shifted / missing
            P, G = scattered(rng, shape, int(rng.integers(3, 9)), 3, 5, small_hollow_cube, 0.3)
            P2, G2 = scattered(rng, shape, int(rng.integers(3, 9)), 3, 6, small_ring(rng), 0.3)
            P3, G3 = scattered(rng, shape, int(rng.integers(3, 9)), 1, 3,
                               lambda sh_, c, k: box(sh_, c, [v + k for v in c]), 0.3)
            yield f"strict_scattered_{i}", P | P2 | P3, G | G2 | G3
            continue
        if mode == 0:  # dim 1: several rings, each prediction ring offset from the label's
            G = np.zeros(shape, bool)
            P = np.zeros(shape, bool)
            for _ in range(int(rng.integers(2, 5))):
                c = rng.uniform(0.25, 0.75, 3) * (sh - 1)
                rr = rotation(rng)
                Rk = max(2.5, rng.uniform(0.12, 0.2) * min(sh))
                G |= torus(shape, c, Rk, 1.1, rr)
                off = rng.uniform(0.6, 1.2) * Rk * rng.choice([-1, 1], 3)
                if rng.random() < 0.8:  # mostly offset, now and then the same ring
                    P |= torus(shape, c + off, Rk, 1.1, rr)
                else:
                    P |= torus(shape, c, Rk, 1.1, rr)
            what = "rings_offset"
        elif mode == 1:  # dim 0: label components; prediction fragments of them plus strays
            G = np.zeros(shape, bool)
            for _ in range(int(rng.integers(3, 7))):
                c = rng.uniform(0.15, 0.85, 3) * (sh - 1)
                G |= ball(shape, c, rng.uniform(1.5, 3.5))
            P = G & (rng.random(shape) < rng.uniform(0.3, 0.6))  # fragments inside label components
            P = add_blobs(rng, P, int(rng.integers(1, 4)), 1.2)
            G = add_blobs(rng, G, int(rng.integers(0, 3)), 1.2)
            what = "fragments"
        elif mode == 2:  # dim 2: solid cubes with one-voxel holes, the prediction's shifted
            P, G = scattered(rng, shape, int(rng.integers(3, 12)), 4, 6, cube_one_hole, 0.3, 0.2)
            what = "cavities_offset"
        else:  # all three: independent thresholds of independent fields with tunnels and cavities
            f = smooth_field(rng, shape, 1.2)
            g = smooth_field(rng, shape, 1.2)
            G = f > -0.6
            P = (0.6 * f + 0.8 * g) > -0.6
            what = "dense_fields"
        yield f"strict_{what}_{i}", P, G


CATEGORIES: dict[str, Callable] = {
    "random_blobs": cat_random_blobs,
    "sparse_voxels": cat_sparse_voxels,
    "sheets_pinholes": cat_sheets_pinholes,
    "touching_sheets": cat_touching_sheets,
    "cavities": cat_cavities,
    "tori_rings": cat_tori_rings,
    "octant_crossing": cat_octant_crossing,
    "empty_full": cat_empty_full,
    "tiny": cat_tiny,
    "identical": cat_identical,
    "transformed": cat_transformed,
    "label_noise": cat_label_noise,
    "strict_mismatch": cat_strict_mismatch,
}


# ----------------------------------------------------------------------
# demo cases (nx47_pipeline.data.demo)
# ----------------------------------------------------------------------
DEMO_SEEDS = (101, 202, 303)
DEMO_EDGE = 64

_DEMO_SNIPPET = """
import sys, numpy as np
from nx47_pipeline.data.demo import make_volume
out = sys.argv[1]
for s in map(int, sys.argv[2].split(',')):
    img, lab = make_volume(({e}, {e}, {e}), seed=s)
    np.save(f'{{out}}/img{{s}}.npy', img)
    np.save(f'{{out}}/lab{{s}}.npy', lab)
"""


def _demo_python(explicit: str | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if explicit:
        return [explicit], env
    venv_py = REPO / ".venv" / "bin" / "python"
    if venv_py.exists():
        ok = subprocess.run([str(venv_py), "-c", "import nx47_pipeline.data.demo"],
                            capture_output=True, cwd=REPO).returncode == 0
        if ok:
            return [str(venv_py)], env
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return [sys.executable], env


def demo_cases(rng, demo_python: str | None) -> Iterator[Case]:
    from skimage.filters import threshold_otsu

    cmd, env = _demo_python(demo_python)
    print(f"[fixture] demo volumes via {cmd[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(cmd + ["-c", _DEMO_SNIPPET.format(e=DEMO_EDGE), tmp,
                              ",".join(map(str, DEMO_SEEDS))], check=True, env=env, cwd=tmp)
        vols = {s: (np.load(f"{tmp}/img{s}.npy"), np.load(f"{tmp}/lab{s}.npy")) for s in DEMO_SEEDS}
    preds = ("otsu", "dilate1", "holes")
    for j in range(6):
        s = DEMO_SEEDS[j // 2]
        img, lab = vols[s]
        keep = lab != 2
        G = lab == 1
        what = preds[j % 3] if j < 3 else preds[(j + 1) % 3]
        if what == "otsu":
            P = img > threshold_otsu(img)
        elif what == "dilate1":
            P = ndi.binary_dilation(G, ball26())
        else:
            P = punch(rng, G, 40, 2.0)
        yield f"demo_seed{s}_{what}", P & keep, G & keep


# ----------------------------------------------------------------------
# main
# ----------------------------------------------------------------------
def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps (byte-identical reruns)."""
    import io
    import zipfile

    tmp = path.with_suffix(".npz.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def strict_dims(c: Counts) -> list[bool]:
    return [m < min(p, g) for m, p, g in c]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oracle-path", required=True,
                    help="folder holding the built betti_matching module (e.g. /tmp/bm/build)")
    ap.add_argument("--out", default="tests/fixtures/betti_oracle", help="output folder")
    ap.add_argument("--oracle-commit", default=ORACLE_COMMIT)
    ap.add_argument("--seed", type=int, default=47, help="master seed")
    ap.add_argument("--demo-python", default=None,
                    help="python that can import nx47_pipeline.data.demo (default: auto)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo cases (debugging)")
    args = ap.parse_args(argv)

    sys.path.insert(0, args.oracle_path)
    import betti_matching as bm  # noqa: E402  (the oracle; only here)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cases = []
    arrays: dict[str, np.ndarray] = {}
    t_oracle = 0.0
    slowest = (0.0, "")
    gens = list(CATEGORIES.items())
    if not args.no_demo:
        gens.append(("demo", None))
    for ci, (cat, gen) in enumerate(gens):
        rng = np.random.default_rng([args.seed, ci])
        it = demo_cases(rng, args.demo_python) if gen is None else gen(rng)
        for name, P, G in it:
            P = np.ascontiguousarray(P, dtype=bool)
            G = np.ascontiguousarray(G, dtype=bool)
            assert P.shape == G.shape and P.ndim == 3, (name, P.shape, G.shape)
            t0 = time.perf_counter()
            whole = oracle_counts(bm, P, G)
            octs = octant_counts(bm, P, G)
            dt = time.perf_counter() - t0
            t_oracle += dt
            if dt > slowest[0]:
                slowest = (dt, f"{name} {list(P.shape)}")
            i = len(cases)
            arrays[f"p{i}"] = np.packbits(P.ravel())
            arrays[f"g{i}"] = np.packbits(G.ravel())
            cases.append({"name": name, "category": cat, "shape": list(P.shape),
                          "whole": whole, "octants": octs, "sum": sum_counts(octs)})
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"

    write_npz(out / "volumes.npz", arrays)
    source = (f"Betti-Matching-3D commit {args.oracle_commit}, compute_matching(1 - P, 1 - G) "
              "in float64 (input1 = prediction, input2 = label) on the whole pair ('whole') and "
              "on each of the 2x2x2 octants cut at h = (n + 1) // 2 per axis ('octants', "
              "z-half outermost, x-half innermost; zero-length octants count 0), as the "
              "competition metric calls it; each entry is [matched, pred, label] per dim 0, 1, 2.")
    lines = [json.dumps(c, separators=(", ", ": ")) for c in cases]
    text = ('{"source": ' + json.dumps(source) + ',\n "cases": [\n  '
            + ",\n  ".join(lines) + "\n ]\n}\n")
    json.loads(text)
    (out / "counts.json").write_text(text)

    # summary
    print(f"[fixture] {len(cases)} cases; oracle time {t_oracle:.2f} s; "
          f"slowest {slowest[0]:.2f} s ({slowest[1]})")
    hdr = f"{'category':<16} {'n':>3}  {'strict(sum) d0 d1 d2 any':>26}  {'strict(whole) d0 d1 d2 any':>28}"
    print(hdr)
    tot = {"n": 0, "s": [0, 0, 0, 0], "w": [0, 0, 0, 0]}
    for cat, _ in gens:
        cc = [c for c in cases if c["category"] == cat]
        s = [sum(strict_dims(c["sum"])[k] for c in cc) for k in range(3)]
        s.append(sum(any(strict_dims(c["sum"])) for c in cc))
        w = [sum(strict_dims(c["whole"])[k] for c in cc) for k in range(3)]
        w.append(sum(any(strict_dims(c["whole"])) for c in cc))
        tot["n"] += len(cc)
        tot["s"] = [a + b for a, b in zip(tot["s"], s)]
        tot["w"] = [a + b for a, b in zip(tot["w"], w)]
        print(f"{cat:<16} {len(cc):>3}  {s[0]:>15} {s[1]:>2} {s[2]:>2} {s[3]:>3}  "
              f"{w[0]:>17} {w[1]:>2} {w[2]:>2} {w[3]:>3}")
    s, w = tot["s"], tot["w"]
    print(f"{'TOTAL':<16} {tot['n']:>3}  {s[0]:>15} {s[1]:>2} {s[2]:>2} {s[3]:>3}  "
          f"{w[0]:>17} {w[1]:>2} {w[2]:>2} {w[3]:>3}")
    n_oct = sum(strict_dims(o)[k] for c in cases for o in c["octants"] for k in range(3))
    print(f"[fixture] octants with matched < min(pred, label) in some dim (dim-octant pairs): {n_oct}")
    sizes = {p.name: p.stat().st_size for p in (out / "volumes.npz", out / "counts.json")}
    print(f"[fixture] wrote {sizes} (total {sum(sizes.values()) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
