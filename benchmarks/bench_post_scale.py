#!/usr/bin/env python3
"""``nx47 infer``'s whole-volume post-processing on Dask: client and worker memory as the volume grows.

For each ``--sizes`` N a classes store (``classes.zarr``, the input of the
post-processing stage: 0 / 1 / 2 hysteresis classes, chunks of ``--chunk``)
of N^3 voxels (``--length`` L: L x N x N) is written tile by tile from a few distinct 128^3 tiles of the
demo generator (label 1 as strong, its 1-voxel shell as weak, sparse weak
speckles as noise), so sheets cross chunk faces (and end at tile borders).
The post-processing (hysteresis, closing, cavities, dust, hole plugs; the
same function ``nx47 infer --scheduler`` runs) then runs on a LocalCluster
of ``--workers`` single-thread worker processes under ``--memory-limit``,
this process being the client.  Reported: wall time, the client's RSS
before and its peak during the post-processing (sampled every 0.2 s), each
worker's peak RSS (sampled every 0.5 s through the scheduler), worker
restarts, the tasks and their worker-seconds (in all, and those of the one
task per slab and phase that joins a slab's labels with the frontier or
hands the final sums down: the sweep's serial part), the 1-minute load at
the start and end, and — where the classes fit in memory
(``--compare-up-to``) — whether the mask equals the in-process numpy
post-processing.

    python benchmarks/bench_post_scale.py --out benchmarks/results/post_scale.md \\
        [--sizes 384 768 1024] [--chunk 128] [--workers 2] [--memory-limit 1GB] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _common import git_commit, load_note, machine, write_section  # noqa: E402

from nx47_pipeline.data.demo import make_volume  # noqa: E402
from nx47_pipeline.run.infer import _postprocess_dask, _postprocess_numpy  # noqa: E402

TILE = 128
N_TILES = 4
CLOSING = (1, 1, 1)
MIN_SIZE = 100
PLUG = 64


def tiles(seed: int = 5) -> list[np.ndarray]:
    from scipy import ndimage  # noqa: PLC0415

    out = []
    rng = np.random.default_rng(seed)
    for i in range(N_TILES):
        _, lab = make_volume((TILE,) * 3, seed=seed + i, label_2_fraction=0.5)
        strong = lab == 1
        weak = ndimage.binary_dilation(strong) & ~strong
        weak |= rng.random(strong.shape) < 0.002
        out.append(np.where(strong, 2, np.where(weak, 1, 0)).astype(np.uint8))
    return out


def write_classes(path: Path, size: int, chunk: int, pieces: list[np.ndarray], length: int = 0) -> None:
    """``length`` x ``size`` x ``size`` classes (``length`` 0: ``size``) tiled from ``pieces``."""
    import zarr  # noqa: PLC0415

    shutil.rmtree(path, ignore_errors=True)
    shape = (length or size, size, size)
    store = zarr.create_array(str(path), shape=shape, chunks=(chunk,) * 3, dtype="uint8", fill_value=0)
    k = 0
    for z in range(0, shape[0], TILE):
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                t = pieces[k % len(pieces)]
                k += 1
                sl = (slice(z, min(shape[0], z + TILE)), slice(y, min(size, y + TILE)),
                      slice(x, min(size, x + TILE)))
                store[sl] = t[tuple(slice(0, s.stop - s.start) for s in sl)]


def rss_mb() -> float:
    import psutil  # noqa: PLC0415

    return psutil.Process().memory_info().rss / 2**20


def run_size(size: int, args, work: Path, pieces: list[np.ndarray]) -> dict:
    import dask  # noqa: PLC0415
    import zarr  # noqa: PLC0415
    from distributed import Client, LocalCluster  # noqa: PLC0415

    classes = work / f"classes_{size}.zarr"
    mask = work / f"mask_{size}.zarr"
    t0 = time.monotonic()
    write_classes(classes, size, args.chunk, pieces, args.length)
    write_s = time.monotonic() - t0
    length = args.length or size
    row = {"size": size, "length": length, "chunks": -(-length // args.chunk) * (-(-size // args.chunk)) ** 2,
           "write_s": write_s}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, Client(cluster) as client:
        worker_peak: dict[str, float] = {}
        addresses: set[str] = set()
        client_peak = [rss_mb()]
        row["client_before_mb"] = client_peak[0]
        stop = threading.Event()

        def sample_client() -> None:
            while not stop.wait(0.2):
                client_peak[0] = max(client_peak[0], rss_mb())

        def sample_workers() -> None:
            import psutil  # noqa: PLC0415

            while not stop.wait(0.5):
                try:
                    got = client.run(lambda: psutil.Process().memory_info().rss / 2**20)
                except Exception:  # noqa: BLE001 - a worker restarting: try again
                    continue
                for addr, mb in got.items():
                    addresses.add(addr)
                    worker_peak[addr] = max(worker_peak.get(addr, 0.0), mb)

        threads = [threading.Thread(target=f, daemon=True) for f in (sample_client, sample_workers)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        error = ""
        row["load_start"] = os.getloadavg()[0]
        rounds = None
        try:
            with dask.config.set(scheduler=client):
                rounds = _postprocess_dask(classes, mask, closing_radius=CLOSING, min_size=MIN_SIZE,
                                           chunk=args.chunk, plug_size=PLUG)
        except Exception as exc:  # noqa: BLE001 - reported
            error = f"{type(exc).__name__}: {exc}"[:300]
        row["post_s"] = time.monotonic() - t0
        row["load_end"] = os.getloadavg()[0]
        slab_kinds = ("reduce", "resolve")  # one task per slab and phase: the sweep's serial part
        row["tasks"] = sum(rounds.tasks.values()) if rounds else 0
        row["task_s"] = sum(rounds.seconds.values()) if rounds else float("nan")
        row["slab_s"] = sum(rounds.seconds.get(k, 0.0) for k in slab_kinds) if rounds else float("nan")
        row["slab_longest_s"] = max(rounds.longest.get(k, 0.0) for k in slab_kinds) if rounds else float("nan")
        row["slab_labels"] = rounds.largest_slab if rounds else 0
        stop.set()
        for t in threads:
            t.join()
        row["client_peak_mb"] = client_peak[0]
        row["worker_peaks_mb"] = sorted(worker_peak.values(), reverse=True)
        row["worker_addresses"] = len(addresses)
        row["error"] = error
    row["equal"] = None
    if not error and size <= args.compare_up_to:
        ref = work / f"ref_{size}.zarr"
        _postprocess_numpy(classes, ref, closing_radius=CLOSING, min_size=MIN_SIZE, chunk=args.chunk, plug_size=PLUG)
        a = zarr.open_array(str(mask), mode="r")
        b = zarr.open_array(str(ref), mode="r")
        row["equal"] = all(np.array_equal(a[z:z + args.chunk], b[z:z + args.chunk])
                           for z in range(0, length, args.chunk))
        shutil.rmtree(ref, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(classes, ignore_errors=True)
        shutil.rmtree(mask, ignore_errors=True)
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE / "results" / "post_scale.md")
    ap.add_argument("--sizes", type=int, nargs="+", default=[384, 768, 1024])
    ap.add_argument("--length", type=int, default=0,
                    help="volumes of LENGTH x N x N (0: N^3): the slabs' cross-section fixed, their number grown")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--compare-up-to", type=int, default=768,
                    help="compare with the in-process numpy post-processing up to this size")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = load_note()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nx47-post-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    pieces = tiles()
    rows: list[dict] = []
    for n in args.sizes:  # the results file is rewritten after each size: a stopped run keeps its rows
        rows.append(run_size(n, args, work, pieces))
        write_section(args.out, report(rows, args, started, load))


def report(rows: list[dict], args, started: str, load: str) -> list[str]:
    """The results section for ``rows`` (one per size done so far)."""
    done = ", ".join(f"{r['size']}³" for r in rows)
    lines = [
        "## `nx47 infer` post-processing at scale: client and worker memory",
        "",
        f"The whole-volume post-processing of `nx47 infer --scheduler` (hysteresis, closing {CLOSING}, cavities, "
        f"dust {MIN_SIZE}, hole plugs {PLUG}) on a LocalCluster of {args.workers} single-thread workers under "
        f"`--memory-limit {args.memory_limit}`, this process the client; classes stores of N³ in chunks of "
        f"{args.chunk}³ written from {N_TILES} distinct {TILE}³ demo tiles (label 1 strong, its shell weak, 0.2 % "
        "weak speckles): sheets cross chunk faces and end at tile borders. Client RSS sampled every 0.2 s, "
        "worker RSS every 0.5 s (short peaks can be missed); task worker-s: the seconds of every task summed, in "
        "brackets those of the per-slab tasks (the sweep's serial part) and the longest of them. Command: "
        "`python benchmarks/bench_post_scale.py "
        f"--sizes {' '.join(map(str, args.sizes))}{f' --length {args.length}' if args.length else ''} "
        f"--chunk {args.chunk} --workers {args.workers} "
        f"--memory-limit {args.memory_limit}`"
        + ("" if len(rows) == len(args.sizes) else
           f" — stopped after {done}: the other sizes are not measured") + ".",
        "",
        "| volume | chunks (per slab) | post-processing (s) | tasks | task worker-s (per-slab tasks, longest) "
        "| labels in a slab's reduce (most) "
        "| client RSS before → peak (MB) | worker peaks (MB) | worker processes seen | mask = in-process numpy "
        "| 1-min load start / end |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    for r in rows:
        eq = "n/a (too large)" if r["equal"] is None else ("yes" if r["equal"] else "NO")
        if r["error"]:
            eq = f"failed: {r['error']}"
        per_slab = (-(-r["size"] // args.chunk)) ** 2
        vol = f"{r['size']}³" if r.get("length", r["size"]) == r["size"] else f"{r['length']} × {r['size']}²"
        lines.append(f"| {vol} | {r['chunks']} ({per_slab}) | {r['post_s']:.0f} | {r['tasks']} | "
                     f"{r['task_s']:.0f} ({r['slab_s']:.1f}, {r['slab_longest_s']:.2f}) | {r.get('slab_labels', 0):,} | "
                     f"{r['client_before_mb']:.0f} → {r['client_peak_mb']:.0f} | "
                     f"{', '.join(f'{m:.0f}' for m in r['worker_peaks_mb'])} | {r['worker_addresses']} | {eq} | "
                     f"{r['load_start']:.1f} / {r['load_end']:.1f} |")
    lines += ["", f"Machine: {machine()}. Started {started}. Commit: {git_commit()}. {load}"]
    return lines


if __name__ == "__main__":
    main()
