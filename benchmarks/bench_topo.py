"""Exact TopoScore: NX47's Betti matching beside the hosts' matcher, 320^3.

Usage::

    python benchmarks/bench_topo.py --out benchmarks/results/topo.md \
        [--oracle-path /path/to/Betti-Matching-3D/build]

For three 320³ pairs (the metric benchmark's wavy sheets; the same with
holes in label and prediction, so dimension 1 carries weight; a demo chunk
against its Otsu segmentation) it scores the pair in full with
``score_volume`` (SurfaceDice, VOI and the exact TopoScore) in a fresh
process pinned to one core, and reports its wall time and peak resident
memory, the exact TopoScore's own time, and the counts per dimension.  With
``--oracle-path`` (a built Betti-Matching-3D, a local reference that is
never installed or shipped) it also times the hosts' matcher on the same
eight octants, in the same run, and checks that both give the same counts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import git_commit as _git_commit, load_note, machine, write_section  # noqa: E402
from bench_metric import make_pair  # noqa: E402

from nx47_pipeline.data.demo import make_volume  # noqa: E402
from nx47_pipeline.model import metric as M  # noqa: E402
from nx47_pipeline.model.postprocess import otsu_baseline  # noqa: E402

PAIRS = ("sheets", "holes", "demo_otsu")


def _holes_pair(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Wavy sheets with holes in the label (tunnels) and more in the prediction."""
    pred, label = make_pair(n, seed=seed)
    label[:, :, int(0.55 * n):][label[:, :, int(0.55 * n):] == 2] = 0  # less ignored
    label[:, :, -3:] = 2
    rng = np.random.default_rng(seed)
    for target, count in ((label, 40), (pred, 120)):
        for _ in range(count):
            c = rng.integers(8, n - 8, size=3)
            r = int(rng.integers(2, 5))
            sl = (slice(c[0] - 4, c[0] + 4), slice(c[1] - r, c[1] + r), slice(c[2] - r, c[2] + r))
            target[sl] = np.where(target[sl] == 1, 0, target[sl])
    return pred, label


def make(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) of the named pair at edge ``n``."""
    if name == "sheets":
        return make_pair(n)
    if name == "holes":
        return _holes_pair(n)
    image, label = make_volume((n, n, n), seed=303)
    return otsu_baseline(image).astype(np.uint8), label


def _masks(pred, label):
    keep = label != 2
    return (pred != 0) & keep, (label == 1) & keep


def _child(name: str, n: int) -> None:
    """Score one pair in this (fresh, one-core) process; print JSON."""
    import resource

    pred, label = make(name, n)
    M.score_volume(pred[:16, :16, :16], label[:16, :16, :16])  # load the compiled kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    vs = M.score_volume(pred, label)
    total = time.perf_counter() - t
    p, g = _masks(pred, label)
    t = time.perf_counter()
    M.topo_score(p, g)
    topo = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"total_s": total, "topo_s": topo, "peak_mib": peak, "base_mib": base,
                      "score": vs.score, "topo": vs.topo, "surface_dice": vs.surface_dice,
                      "voi": vs.voi_score, "matched": vs.topo_matched,
                      "pred": vs.betti_pred, "gt": vs.betti_gt}))


def _oracle(name: str, n: int, path: str) -> dict:
    sys.path.insert(0, path)
    import betti_matching as bm  # the local reference, never a dependency

    pred, label = make(name, n)
    p, g = _masks(pred, label)
    sums = np.zeros((3, 3), dtype=np.int64)
    t = time.perf_counter()
    for box in M._octants(p.shape):
        r = bm.compute_matching(np.ascontiguousarray(1.0 - p[box].astype(np.float64)),
                                np.ascontiguousarray(1.0 - g[box].astype(np.float64)))
        for k in range(3):
            m = len(r.input1_matched_birth_coordinates[k])
            sums[k] += (m, m + len(r.input1_unmatched_birth_coordinates[k]),
                        m + len(r.input2_unmatched_birth_coordinates[k]))
    return {"oracle_s": time.perf_counter() - t, "sums": sums.tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--quick", action="store_true", help="160^3 instead of 320^3")
    ap.add_argument("--oracle-path", default=os.environ.get("NX47_BETTI_ORACLE"),
                    help="folder holding a built betti_matching module (optional)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = 160 if args.quick else args.size
    if args.child:
        _child(args.child, n)
        return 0

    rows, notes = [], []
    for name in PAIRS:
        # a fresh process on one core: its peak memory is this pair's alone
        cmd = ["taskset", "-c", "0", sys.executable, __file__, "--child", name, "--size", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        line = {"name": name, **r}
        if args.oracle_path:
            o = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                                "import json,sys; sys.argv=['x']; import bench_topo as b; "
                                f"print(json.dumps(b._oracle({name!r}, {n}, {args.oracle_path!r})))"],
                               capture_output=True, text=True, check=True, cwd=str(HERE))
            line.update(json.loads(o.stdout.strip().splitlines()[-1]))
            ours = [[m, p, g] for m, p, g in zip(r["matched"], r["pred"], r["gt"])]
            line["agree"] = ours == line["sums"]
        rows.append(line)
        print(name, json.dumps(line), flush=True)

    head = "| pair | score | TopoScore | counts (m/p/g) dims 0, 1, 2 | score_volume, s | exact TopoScore, s | peak RSS, MiB |"
    sep = "| --- | ---: | ---: | --- | ---: | ---: | ---: |"
    if args.oracle_path:
        head += " hosts' matcher, s | same counts |"
        sep += " ---: | --- |"
    table = [head, sep]
    for r in rows:
        counts = "; ".join(f"{m}/{p}/{g}" for m, p, g in zip(r["matched"], r["pred"], r["gt"]))
        cells = (f"| {r['name']} | {r['score']:.4f} | {r['topo']:.4f} | {counts} | "
                 f"{r['total_s']:.1f} | {r['topo_s']:.1f} | {r['peak_mib']:.0f} |")
        if args.oracle_path:
            cells += f" {r['oracle_s']:.1f} | {'yes' if r['agree'] else 'NO'} |"
        table.append(cells)
    if not args.oracle_path:
        notes.append("The hosts' matcher was not run (no `--oracle-path`).")
    lines = [
        f"## Exact TopoScore ({n}³ pairs)",
        "",
        "Each pair is scored in full (`score_volume`: SurfaceDice, VOI and the exact TopoScore) "
        "in a fresh process pinned to one core (`taskset -c 0`); the exact TopoScore is then "
        "timed alone. Peak RSS is the scoring process's maximum resident memory (Python, "
        "numpy and the compiled kernels included). The hosts' matcher (Betti-Matching-3D, "
        "built locally as a reference, never shipped) runs on the same eight octants in the "
        "same run, also on one core. Pairs: `sheets` (the metric benchmark's pair), `holes` "
        "(the same sheets with holes in label and prediction: tunnels), `demo_otsu` (a demo "
        "chunk against its Otsu segmentation: many components).",
        "",
        *table,
        "",
        *notes,
        f"Machine: {machine()}; {_dt.date.today().isoformat()}, commit {_git_commit()}. "
        + load_note(),
        "",
    ]
    if args.out:
        write_section(args.out, lines)
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
