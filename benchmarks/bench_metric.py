"""Benchmark of the local competition metric on a realistic 320^3 pair.

Usage::

    python benchmarks/bench_metric.py --out benchmarks/results/metric.md

Builds a 320^3 label volume with thin wavy papyrus-like sheets (~5 % label 1,
a 3-voxel ignore border and a large ignored region, as in the real labels)
and an imperfect prediction (sheets shifted by one voxel, holes, a bridge
between two sheets, dust), then times ``score_volume`` and each of its parts.
Also times the reference ``surface-distance`` computation (scipy distance
transform) on the same pair and reports the agreement.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nx47_pipeline.model import metric as M  # noqa: E402
from _common import git_commit as _git_commit, ram_gib as _ram_gib, load_note  # noqa: E402


def make_pair(n: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, label) pair of shape (n, n, n)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n].astype(np.float32)
    z = np.arange(n, dtype=np.float32)[:, None, None]
    label = np.zeros((n, n, n), np.uint8)
    pred = np.zeros((n, n, n), np.uint8)
    n_sheets = max(2, n // 32)  # ~5 % label 1 at any size
    for i in range(n_sheets):
        base = (i + 0.5) * n / n_sheets
        amp = rng.uniform(3, 8)
        fy, fx = rng.uniform(0.01, 0.04, size=2)
        ph = rng.uniform(0, 6.3, size=2)
        surf = base + amp * np.sin(fy * y + ph[0]) * np.cos(fx * x + ph[1])
        label[np.abs(z - surf[None]) < 1.5] = 1
        pred[np.abs(z - (surf[None] + 1.0)) < 1.5] = 1
    # holes in the prediction
    for _ in range(30):
        c = rng.integers(0, n, size=3)
        r = int(rng.integers(3, 8))
        sl = tuple(slice(max(0, v - r), v + r) for v in c)
        pred[sl] = 0
    # a bridge merging two sheets and some dust
    pred[int(0.1 * n) : int(0.3 * n), n // 2 : n // 2 + 3, n // 2 : n // 2 + 3] = 1
    dust = rng.integers(0, n, size=(500, 3))
    pred[dust[:, 0], dust[:, 1], dust[:, 2]] = 1
    # ignore: 3-voxel border on every face and ~half of the volume
    label[:3] = 2
    label[-3:] = 2
    label[:, :3] = 2
    label[:, -3:] = 2
    label[:, :, :3] = 2
    label[:, :, -3:] = 2
    label[:, :, int(0.55 * n) :] = 2
    return pred, label


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the (slow) surface-distance reference timing")
    args = ap.parse_args(argv)

    pred, label = make_pair(args.size)
    keep = label != 2
    p = (pred != 0) & keep
    g = (label == 1) & keep
    fg_label = float((label == 1).mean())
    ignored = float((label == 2).mean())

    vs, t_total = _timed(M.score_volume, pred, label)
    sdv, t_sd = _timed(M.surface_dice, p, g)
    _, t_voi = _timed(M.voi_parts, p, g)
    _, t_topo = _timed(M.topo_score, p, g)

    rows = [
        ("score_volume (all)", t_total),
        ("surface_dice (edt)", t_sd),
        ("voi_parts (cc3d + skimage)", t_voi),
        ("topo_score (8 octants, Betti)", t_topo),
    ]
    ref_line = ""
    if not args.no_reference:
        import surface_distance as sd

        ref, t_ref = _timed(
            lambda: sd.compute_surface_dice_at_tolerance(
                sd.compute_surface_distances(g, p, (1.0, 1.0, 1.0)), 2.0
            )
        )
        rows.append(("surface-distance reference (scipy)", t_ref))
        ref_line = (
            f"SurfaceDice: NX47 {sdv:.8f}, surface-distance {ref:.8f} "
            f"(|diff| = {abs(sdv - ref):.1e}); speed-up {t_ref / t_sd:.1f}x.\n"
        )

    n = args.size
    lines = [
        f"## Local competition metric ({n}³ pair)",
        "",
        f"One synthetic {n}³ pair: {max(2, n // 32)} wavy 3-voxel sheets "
        f"({fg_label:.1%} label 1), "
        f"{ignored:.0%} ignored (label 2), prediction shifted by one voxel with "
        "holes, a bridge between sheets and dust. Wall-clock seconds, one run each.",
        "",
        "| step | seconds |",
        "| --- | ---: |",
        *[f"| {name} | {sec:.2f} |" for name, sec in rows],
        "",
        f"Result: score {vs.score:.4f}, SurfaceDice {vs.surface_dice:.4f}, "
        f"VOI score {vs.voi_score:.4f} (VOI {vs.voi:.3f}), TopoScore {vs.topo:.4f} "
        f"({vs.topo_method}); feature counts (dims 0-2) pred {vs.betti_pred}, "
        f"gt {vs.betti_gt}.",
        "",
        ref_line,
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM, Python "
        f"{platform.python_version()}; {_dt.date.today().isoformat()}, "
        f"commit {_git_commit()}. " + load_note(),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
