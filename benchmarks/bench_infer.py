#!/usr/bin/env python3
"""Chunked inference on Dask: 1 vs 2 workers, memory per worker, a whole-scroll projection.

A small linear model is trained on generated data (``nx47 run``, exported
with ``nx47 export-model``); a ``--size``^3 zarr volume is generated with the
demo generator and segmented with ``nx47 infer --scheduler local`` by one and
by two worker processes under ``--memory-limit``.  Reported per run: wall
time, chunks per minute, the peak memory each worker reported in
``cluster.json`` (sampled every 2 s) and the mask's agreement between the two
runs.  The per-chunk cost of the two-worker run gives a projection on paper
for a whole scroll.

    python benchmarks/bench_infer.py --out benchmarks/results/infer.md [--size 256] [--chunk 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _common import load_note, machine, write_section  # noqa: E402

from nx47_pipeline.data.demo import make_volume  # noqa: E402

#: A whole scroll for the projection: 14 376 slices of 7 888 x 8 096 voxels
#: (about the size of PHerc. Paris 4 at 7.91 um), stored as OME-Zarr.
SCROLL_SHAPE = (14376, 7888, 8096)


def nx47(*args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(HERE.parent))
    if proc.returncode != 0:
        raise SystemExit(f"nx47 {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def watch_peaks(out: Path, stop: threading.Event) -> dict[str, int]:
    """Peak ``memory_bytes`` per worker address seen in ``out/cluster.json``."""
    peaks: dict[str, int] = {}

    def loop() -> None:
        while not stop.wait(0.5):
            try:
                doc = json.loads((out / "cluster.json").read_text())
            except (OSError, ValueError):
                continue
            for w in doc.get("workers", []):
                peaks[w["address"]] = max(peaks.get(w["address"], 0), int(w.get("memory_bytes", 0)))

    threading.Thread(target=loop, daemon=True).start()
    return peaks


def infer_run(bundle: Path, store: Path, out: Path, *, workers: int, chunk: int, memory_limit: str) -> dict:
    stop = threading.Event()
    peaks = watch_peaks(out, stop)
    t0 = time.monotonic()
    nx47("infer", "--model", str(bundle), "--input", str(store), "--out", str(out), "--scheduler", "local",
         "--workers", str(workers), "--chunk", str(chunk), "--memory-limit", memory_limit)
    wall = time.monotonic() - t0
    stop.set()
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    stage_s = {}
    for e in events:
        if e["kind"] == "STEP" and e["payload"].get("phase") == "end":
            stage_s[e["stage"]] = float(e["payload"].get("duration_s") or 0.0)
    chunks = max(int(e["payload"].get("step_total", 0)) for e in events
                 if e["kind"] == "PROGRESS_UPDATE" and e["stage"] == "probability")
    return {"wall": wall, "stages": stage_s, "chunks": chunks,
            "peaks": sorted(peaks.values(), reverse=True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE / "results" / "infer.md")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--quick", action="store_true", help="a 128^3 volume in chunks of 64")
    args = ap.parse_args()
    if args.quick:
        args.size, args.chunk = 128, 64
    import zarr  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="nx47-bench-infer-") as tmp:
        tmp = Path(tmp)
        nx47("demo-data", "--out", str(tmp / "data"), "--n-train", "6", "--n-test", "1", "--shape", "64",
             "--seed", "5")
        nx47("run", "--data", str(tmp / "data"), "--out", str(tmp / "run"), "--no-unet",
             "--max-val-volumes", "2")
        nx47("export-model", "--run", str(tmp / "run"), "--out", str(tmp / "bundle"))
        image, _ = make_volume((args.size,) * 3, seed=11)
        store = tmp / "volume.zarr"
        arr = zarr.create_array(str(store), shape=image.shape, chunks=(args.chunk,) * 3, dtype="uint8")
        arr[...] = image
        del image
        runs = {}
        for w in (1, 2):
            runs[w] = infer_run(tmp / "bundle", store, tmp / f"w{w}", workers=w, chunk=args.chunk,
                                memory_limit=args.memory_limit)
        m1 = np.asarray(zarr.open_array(str(tmp / "w1" / "mask.zarr"), mode="r")[...])
        m2 = np.asarray(zarr.open_array(str(tmp / "w2" / "mask.zarr"), mode="r")[...])
        differ = float(np.mean(m1 != m2))

    n = runs[1]["chunks"]
    lines = [f"## Chunked inference on Dask ({args.size}³ zarr, chunks of {args.chunk}³, "
             f"--memory-limit {args.memory_limit} per worker)", "",
             f"`nx47 infer --scheduler local --workers N` on a generated {args.size}³ uint8 zarr volume "
             f"({n} chunks), a linear bundle trained on generated data. Command: "
             "`python benchmarks/bench_infer.py --out benchmarks/results/infer.md`.", "",
             "| workers | wall s | chunk probabilities s | whole-volume post-processing s | chunks / min "
             "| peak memory per worker (MB, sampled) |",
             "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for w, r in runs.items():
        prob = r["stages"].get("probability", float("nan"))
        post = r["stages"].get("postprocess", float("nan"))
        lines.append(f"| {w} | {r['wall']:.1f} | {prob:.1f} | {post:.1f} | {60 * n / prob:.1f} | "
                     f"{', '.join(f'{p / 1e6:.0f}' for p in r['peaks']) or 'n/a'} |")
    ratio = runs[1]["stages"]["probability"] / runs[2]["stages"]["probability"]
    per_chunk = runs[2]["stages"]["probability"] * 2 / n  # worker-seconds per chunk
    vox_chunk = args.chunk ** 3
    scroll_vox = float(np.prod(SCROLL_SHAPE))
    scroll_chunks = scroll_vox / vox_chunk
    lines += ["", f"Throughput ratio 2 workers / 1 worker (chunk probabilities): **{ratio:.2f}x** "
              f"on this 2-core machine. Masks of the two runs differ on {differ:.1e} of the voxels.", "",
              f"Projection on paper for a whole scroll of {SCROLL_SHAPE[0]} × {SCROLL_SHAPE[1]} × "
              f"{SCROLL_SHAPE[2]} voxels ({scroll_vox / 1e12:.2f} × 10¹² voxels, {scroll_chunks:,.0f} chunks "
              f"of {args.chunk}³) at the measured {per_chunk:.1f} worker-seconds per chunk: "
              f"{scroll_chunks * per_chunk / 3600:,.0f} worker-hours of chunk probabilities; "
              + ", ".join(f"{k} single-thread workers: {scroll_chunks * per_chunk / 3600 / k:,.1f} h"
                          for k in (64, 256, 1024))
              + ". The whole-volume post-processing (hysteresis and labelling across chunks) is not in this "
              "projection: at scroll size it is the open cost (dask-image's labelling gathers the label "
              "equivalences on the client).", "",
              f"{machine()}. " + load_note()]
    write_section(args.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
