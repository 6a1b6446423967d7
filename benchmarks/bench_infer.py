#!/usr/bin/env python3
"""Chunked inference on Dask: 1 vs 2 workers, memory per worker, a whole-scroll projection.

A small linear model is trained on generated data (``nx47 run``, exported
with ``nx47 export-model``); a ``--size``^3 zarr volume is generated with the
demo generator and segmented with ``nx47 infer --scheduler local`` by one and
by two worker processes under ``--memory-limit``.  Reported per run: wall
time, steady chunks per minute, the workers' CPU seconds per chunk, the peak
memory each worker reported in ``cluster.json`` (sampled every 2 s), memory
trouble (worker restarts, distributed's pause / restart log lines, journal
WARNING events) and the mask's agreement between the runs.  The per-chunk
cost of the largest run gives a projection on paper for a whole scroll.

    python benchmarks/bench_infer.py --out benchmarks/results/infer.md [--size 256] [--chunk 64]
        [--workers 1 2] [--large 768 --large-chunk 128] [--work-dir DIR]
    python benchmarks/bench_infer.py --size 0 --large 768 --work-dir DIR   # only the large run

``--large N`` adds one run of ``--large-workers`` workers (default 2) on an
N^3 volume under the same ``--memory-limit``.  Volumes larger than 256^3 are
generated slab by slab (chunk-thick z-slabs of the demo generator, one seed
each: the generator's memory grows with the slab, not the volume), so
sheets do not continue across slab boundaries; the statistics a chunk sees
are those of the demo data.  ``--work-dir`` keeps (and reuses) the bundle
and the generated volumes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
import _common  # noqa: E402
from _common import git_commit, load_note, machine, write_section  # noqa: E402

from nx47_pipeline.data.demo import make_volume  # noqa: E402

#: A whole scroll for the projection: 14 376 slices of 7 888 x 8 096 voxels
#: (about the size of PHerc. Paris 4 at 7.91 um), stored as OME-Zarr.
SCROLL_SHAPE = (14376, 7888, 8096)


def nx47(*args: str, timeout: float = 7200, cpu: list | None = None) -> subprocess.CompletedProcess:
    """Run ``nx47 ARGS``; with ``cpu``, append ``(epoch s, CPU s of its child processes)`` every 0.5 s
    (the Dask workers of ``nx47 infer --scheduler local``; a child that ended keeps its last figure)."""
    import psutil  # noqa: PLC0415

    popen = subprocess.Popen([sys.executable, "-m", "nx47_pipeline.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=str(HERE.parent))
    stop = threading.Event()

    def sample() -> None:
        seen: dict[int, float] = {}
        parent = psutil.Process(popen.pid)
        while not stop.wait(0.5):
            try:
                for child in parent.children(recursive=True):
                    try:
                        t = child.cpu_times()
                        seen[child.pid] = t.user + t.system
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            cpu.append((time.time(), sum(seen.values())))

    if cpu is not None:
        threading.Thread(target=sample, daemon=True).start()
    try:
        out, err = popen.communicate(timeout=timeout)
    finally:
        stop.set()
        if popen.poll() is None:
            popen.kill()
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    if proc.returncode != 0:
        raise SystemExit(f"nx47 {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def watch_peaks(out: Path, stop: threading.Event) -> dict[str, dict]:
    """Per worker address seen in ``out/cluster.json``: its name, peak ``memory_bytes`` and limit."""
    peaks: dict[str, dict] = {}

    def loop() -> None:
        while not stop.wait(0.5):
            try:
                doc = json.loads((out / "cluster.json").read_text())
            except (OSError, ValueError):
                continue
            for w in doc.get("workers", []):
                cur = peaks.setdefault(w["address"], {"name": str(w.get("name", "")), "peak": 0, "limit": 0})
                cur["peak"] = max(cur["peak"], int(w.get("memory_bytes", 0)))
                cur["limit"] = int(w.get("memory_limit", 0)) or cur["limit"]

    threading.Thread(target=loop, daemon=True).start()
    return peaks


#: What distributed's nanny and worker log when memory runs short (stderr of ``nx47 infer``).
MEMORY_LOG = re.compile(r"Pausing worker|Restarting worker|exceeded \d+% memory budget|Worker process \d+ was killed"
                        r"|Unmanaged memory use is high|KilledWorker", re.I)


def infer_run(bundle: Path, store: Path, out: Path, *, workers: int, chunk: int, memory_limit: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    stop = threading.Event()
    peaks = watch_peaks(out, stop)
    t0 = time.monotonic()
    cpu: list[tuple[float, float]] = []
    proc = nx47("infer", "--model", str(bundle), "--input", str(store), "--out", str(out), "--scheduler", "local",
                "--workers", str(workers), "--chunk", str(chunk), "--memory-limit", memory_limit, cpu=cpu)
    wall = time.monotonic() - t0
    load_end = os.getloadavg()[0]
    stop.set()
    time.sleep(0.6)
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    stage_s = {}
    for e in events:
        if e["kind"] == "STEP" and e["payload"].get("phase") == "end":
            stage_s[e["stage"]] = float(e["payload"].get("duration_s") or 0.0)
    chunk_t = sorted(float(e["t"]) for e in events if e["kind"] == "PROGRESS_UPDATE"
                     and e["stage"] == "probability" and e["payload"].get("worker"))
    chunks = len(chunk_t)
    # steady state: chunks completed after the first one, over the time since it completed (the cluster's
    # start-up and the first task's bundle load are outside)
    steady = (chunks - 1) / (chunk_t[-1] - chunk_t[0]) if chunks > 1 and chunk_t[-1] > chunk_t[0] else float("nan")
    # worker CPU seconds per chunk over the same span (what a chunk costs a core, whatever else ran)
    chunk_ts = sorted(float(e["ts"]) for e in events if e["kind"] == "PROGRESS_UPDATE"
                      and e["stage"] == "probability" and e["payload"].get("worker"))
    cpu_chunk = float("nan")
    if chunks > 1 and len(cpu) > 1:
        ts, cs = np.array(cpu).T
        cpu_chunk = float(np.interp(chunk_ts[-1], ts, cs) - np.interp(chunk_ts[0], ts, cs)) / (chunks - 1)
    memory_lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if MEMORY_LOG.search(ln)]
    return {"workers": workers, "wall": wall, "stages": stage_s, "chunks": chunks, "steady_chunks_s": steady, "cpu_s_per_chunk": cpu_chunk,
            "peaks": sorted(peaks.values(), key=lambda p: -p["peak"]),
            "load_end": load_end, "warnings": [e["payload"].get("message", "") for e in events if e["kind"] == "WARNING"],
            "memory_log": memory_lines}


def write_volume(store: Path, size: int, chunk: int, *, slab: int | None = None) -> float:
    """A ``size``^3 uint8 zarr in chunks of ``chunk``; generated whole up to 256^3, else slab by slab.
    Returns the seconds it took (0 when ``store`` already held it)."""
    import zarr  # noqa: PLC0415

    done = store / "nx47-bench-complete"
    if done.exists():
        arr = zarr.open_array(str(store), mode="r")
        if tuple(arr.shape) == (size,) * 3 and tuple(arr.chunks) == (chunk,) * 3:
            return 0.0
    t0 = time.monotonic()
    arr = zarr.create_array(str(store), shape=(size,) * 3, chunks=(chunk,) * 3, dtype="uint8", overwrite=True)
    if size <= 256:
        arr[...] = make_volume((size,) * 3, seed=11)[0]
    else:
        slab = slab or chunk
        for i, z in enumerate(range(0, size, slab)):
            dz = min(slab, size - z)
            arr[z:z + dz] = make_volume((max(dz, 16), size, size), seed=11 + i)[0][:dz]
    done.write_text("")
    return time.monotonic() - t0


def na(x: float, spec: str) -> str:
    """``x`` formatted, or ``n/a`` for NaN."""
    return "n/a" if x != x else format(x, spec)


def fmt_peaks(r: dict) -> str:
    return ", ".join(f"{p['peak'] / 1e6:.0f}" for p in r["peaks"]) or "n/a"


def memory_note(r: dict) -> str:
    """Restarts (more worker addresses than workers), WARNING events and distributed's memory log lines."""
    extra = len(r["peaks"]) - r["workers"]
    parts = [f"{extra} worker restart(s) (new worker addresses)" if extra > 0 else "no worker restarted"]
    parts.append(f"{len(r['warnings'])} WARNING event(s) in the journal" if r["warnings"]
                 else "no WARNING event in the journal")
    if r["memory_log"] is None:
        parts.append("distributed's log not kept for this run")
    elif r["memory_log"]:
        kinds = sorted({MEMORY_LOG.search(ln).group(0) for ln in r["memory_log"]})
        parts.append(f"{len(r['memory_log'])} memory line(s) logged by distributed ({', '.join(kinds)})")
    else:
        parts.append("no pause, spill-to-pause or restart logged by distributed")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "infer.md")
    ap.add_argument("--size", type=int, default=256, help="edge of the volume of the 1 vs 2 workers comparison (0: none)")
    ap.add_argument("--chunk", type=int, default=64, help="chunk edge of the comparison")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker counts of the comparison (default 1 2; e.g. --workers 2 alone)")
    ap.add_argument("--large", type=int, default=768, help="edge of the large volume (0: no large run)")
    ap.add_argument("--large-chunk", type=int, default=128)
    ap.add_argument("--large-workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GB", help="per worker, every run")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="keep the bundle, the volumes and the runs here (reused when present)")
    ap.add_argument("--quick", action="store_true", help="a 128^3 volume in chunks of 64, no large run")
    ap.add_argument("--report-from", type=Path, default=None, metavar="JSON",
                    help="only write the section from a WORK/bench_infer.json (runs may be merged by hand)")
    args = ap.parse_args()
    if args.report_from:
        write_section(args.out, report(json.loads(args.report_from.read_text())))
        return
    if args.quick:
        args.size, args.chunk, args.large = 128, 64, 0
    if args.size < 1 and args.large < 1:
        ap.error("nothing to run: --size and --large are both 0")
    import zarr  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="nx47-bench-infer-") as tmp:
        work = args.work_dir.resolve() if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundle = work / "bundle"
        if not (bundle / "model.npz").exists():
            nx47("demo-data", "--out", str(work / "data"), "--n-train", "6", "--n-test", "1", "--shape", "64",
                 "--seed", "5")
            nx47("run", "--data", str(work / "data"), "--out", str(work / "run"), "--no-unet",
                 "--max-val-volumes", "2")
            shutil.rmtree(bundle, ignore_errors=True)
            nx47("export-model", "--run", str(work / "run"), "--out", str(bundle))
        runs: dict[int, dict] = {}
        differ = float("nan")
        if args.size > 0:
            store = work / f"volume{args.size}_c{args.chunk}.zarr"
            write_volume(store, args.size, args.chunk)
            for w in args.workers:
                runs[w] = r = infer_run(bundle, store, work / f"s{args.size}_w{w}", workers=w, chunk=args.chunk,
                                        memory_limit=args.memory_limit)
                r.update(size=args.size, chunk=args.chunk)
                print(f"[bench_infer] {args.size}^3, {w} worker(s): {json.dumps(r)}", flush=True)
            if len(runs) > 1:
                masks = [np.asarray(zarr.open_array(str(work / f"s{args.size}_w{w}" / "mask.zarr"), mode="r")[...])
                         for w in runs]
                differ = max(float(np.mean(m != masks[0])) for m in masks[1:])
                del masks
        large = None
        if args.large > 0:
            store = work / f"volume{args.large}_c{args.large_chunk}.zarr"
            gen_s = write_volume(store, args.large, args.large_chunk)
            print(f"[bench_infer] {args.large}^3 volume written in {gen_s:.0f} s", flush=True)
            large = infer_run(bundle, store, work / f"l{args.large}_w{args.large_workers}",
                              workers=args.large_workers, chunk=args.large_chunk, memory_limit=args.memory_limit)
            large.update(size=args.large, chunk=args.large_chunk)
            print(f"[bench_infer] {args.large}^3, {args.large_workers} worker(s): {json.dumps(large)}", flush=True)
        rows = list(runs.values()) + ([large] if large else [])

    doc = {"argv": sys.argv[1:], "runs": rows, "differ": differ, "memory_limit": args.memory_limit,
           "size": args.size, "load_start": _common._LOAD_AT_START,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.work_dir:
        (work / "bench_infer.json").write_text(json.dumps(doc, indent=1))
    write_section(args.out, report(doc))


def report(doc: dict) -> list[str]:
    """The markdown section from the runs of ``doc`` (as written to ``WORK/bench_infer.json``)."""
    rows = doc["runs"]
    cmd = "python benchmarks/bench_infer.py --out benchmarks/results/infer.md"
    argv, skip = [], False
    for a in doc["argv"]:
        if skip or a in ("--out", "--work-dir", "--report-from"):
            skip = not skip
            continue
        argv.append(a)
    cmd += "".join(f" {a}" for a in argv)
    limit = doc["memory_limit"]
    lines = [f"## Chunked inference on Dask (`nx47 infer`, --memory-limit {limit} per worker)", "",
             "`nx47 infer --scheduler local --workers N --memory-limit " + limit + "` (a LocalCluster "
             "of N single-thread worker processes) on generated uint8 zarr volumes, with a linear bundle trained "
             f"on generated data. Command: `{cmd}`. Chunk probabilities = the `probability` stage (cluster start "
             "included); steady chunks/min = chunks completed after the first one over the time since it "
             "completed; worker CPU s / chunk = CPU seconds of the worker processes over the same span, per "
             "chunk (what a chunk costs a core, whatever else the machine ran); post-processing = hysteresis, "
             "closing, cavities and dust on the whole volume, labelled chunk by chunk on the same cluster. Peak "
             "memory = the highest `memory_bytes` each worker reported in `cluster.json` (written every 2 s, so "
             "short peaks can be missed).", "",
             "| volume | chunks | workers | wall s | chunk probabilities s | steady chunks / min "
             "| worker CPU s / chunk | post-processing s | peak memory per worker (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    nan = float("nan")
    for r in rows:
        prob = r["stages"].get("probability", nan)
        post = r["stages"].get("postprocess", nan)
        cpu = r.get("cpu_s_per_chunk", nan)
        lines.append(f"| {r['size']}³ in {r['chunk']}³ | {r['chunks']} | {r['workers']} | {na(r['wall'], '.1f')} "
                     f"| {na(prob, '.1f')} | {60 * r['steady_chunks_s']:.1f} | "
                     f"{na(cpu, '.2f')} | {na(post, '.1f')} | {fmt_peaks(r)} |")
    lines.append("")
    by_w = {r["workers"]: r for r in rows if r["size"] == doc["size"]}
    if 1 in by_w and 2 in by_w:
        r1, r2 = by_w[1], by_w[2]
        ratio = r2["steady_chunks_s"] / r1["steady_chunks_s"]
        ratio_stage = r1["stages"]["probability"] / r2["stages"]["probability"]
        ratio_wall = r1["wall"] / r2["wall"]
        lines += [f"Throughput ratio 2 workers / 1 worker on {doc['size']}³: **{ratio:.2f}x** in steady chunks/min "
                  f"({ratio_stage:.2f}x over the whole probability stage, {ratio_wall:.2f}x in wall time, "
                  f"post-processing included) on this {os.cpu_count()}-core machine, where the client process "
                  f"shares the cores with the workers. Masks of the runs differ on {doc['differ']:.1e} of the "
                  "voxels.", ""]
    for r in rows:
        lim = max((p["limit"] for p in r["peaks"]), default=0)
        lines.append(f"- {r['size']}³ / {r['workers']} worker(s): {memory_note(r)}; 1-minute load average "
                     f"{r['load_end']:.2f} when it ended"
                     + (f"; worker limit {lim / 1e6:.0f} MB, highest peak {100 * r['peaks'][0]['peak'] / lim:.0f} % "
                        "of it" if lim and r["peaks"] else "") + ".")
    lines.append("")
    # projection: from the largest run (its chunk is the one a scroll would use)
    base = max(rows, key=lambda r: (r["size"], r["workers"]))
    ch, size = base["chunk"], base["size"]
    cpu_runs = [r for r in rows if r["chunk"] == ch and r.get("cpu_s_per_chunk", nan) == r.get("cpu_s_per_chunk")]
    if base["steady_chunks_s"] == base["steady_chunks_s"]:
        per_chunk = base["workers"] / base["steady_chunks_s"]  # worker-seconds per chunk
        cpu_chunk = max(cpu_runs, key=lambda r: r["size"])["cpu_s_per_chunk"] if cpu_runs else nan
        scroll_vox = float(np.prod(SCROLL_SHAPE))
        scroll_chunks = int(np.prod([-(-n // ch) for n in SCROLL_SHAPE]))
        worker_h = scroll_chunks * per_chunk / 3600
        cpu_h = scroll_chunks * cpu_chunk / 3600
        posts = [r for r in rows if r["stages"].get("postprocess", nan) == r["stages"].get("postprocess")]
        post_run = max(posts, key=lambda r: r["size"]) if posts else base
        post_per_vox = post_run["stages"].get("postprocess", nan) * post_run["workers"] / post_run["size"] ** 3
        lines += [f"Projection on paper for a whole scroll of {SCROLL_SHAPE[0]} × {SCROLL_SHAPE[1]} × "
                  f"{SCROLL_SHAPE[2]} voxels ({scroll_vox / 1e12:.2f} × 10¹² voxels) in chunks of {ch}³, from the "
                  f"{size}³ run: {per_chunk:.2f} worker-seconds of wall time per chunk ({base['workers']} workers, "
                  "steady state, on this shared machine: an upper bound)"
                  + (f" and {cpu_chunk:.2f} worker CPU seconds per chunk (a core to itself: the lower bound)"
                     if cpu_chunk == cpu_chunk else "") + ":", "",
                  "| quantity | from wall time | from CPU time |", "| --- | ---: | ---: |",
                  f"| voxels | {scroll_vox:,.0f} | |",
                  f"| chunks of {ch}³ | {scroll_chunks:,} | |",
                  f"| chunk-seconds (worker-seconds per chunk) | {per_chunk:.2f} | {na(cpu_chunk, '.2f')} |",
                  f"| chunk probabilities, worker-hours | {worker_h:,.0f} | {na(cpu_h, ',.0f')} |"]
        for k in (2, 16, 64, 256):
            lines.append(f"| hours on {k} single-thread workers (linear scaling) | {worker_h / k:,.1f} "
                         f"| {na(cpu_h / k, ',.1f')} |")
        lines += ["", "Reading and writing are inside these figures (local disk, zarr); a scroll on object "
                  "storage adds its transfer. The whole-volume post-processing is not in these hours: scaled "
                  f"linearly from this benchmark's {post_run['size']}³ run ({post_per_vox * 1e6:.2f} worker-seconds "
                  f"per million voxels) it would add {post_per_vox * scroll_vox / 3600:,.0f} worker-hours; the "
                  "slab-by-slab post-processing's own measurements (client and worker memory at 384³–1024³) and "
                  "the scroll projection with it are in benchmarks/results/post_scale.md.", ""]
    _common._LOAD_AT_START = doc.get("load_start", _common._LOAD_AT_START)  # the runs' start, not now
    date = doc.get("date") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines.append(f"{machine()}. Date: {date}. Commit: {git_commit()}. " + load_note())
    return lines


if __name__ == "__main__":
    main()
