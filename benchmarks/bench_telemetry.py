#!/usr/bin/env python3
"""Telemetry throughput and overhead.

Measures

1. events per second through the bus: no sink, queue only, journal only,
   and journal + queue + console (console to a null stream, default 5 s
   throttle) -- a PROGRESS_UPDATE storm, nobody draining the queue;
2. the telemetry overhead on a representative compute loop (per volume a
   bank of scipy.ndimage filters, PROGRESS_UPDATE at file and sub-step
   level, an ARRAY_TRACE of each input): Telemetry with default settings
   (journal, console, heartbeat every 15 s) versus ``enabled=False``,
   interleaved in the same process, median of several repeats;
3. the same loop when the compute code reports progress on every z-slice
   (a progress storm the default 0.25 s progress throttle absorbs);
4. ``array_trace`` on 320³ uint8 and float32 volumes.

Usage: ``python benchmarks/bench_telemetry.py --out benchmarks/results/telemetry.md [--quick]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nx47_pipeline.telemetry.bus import EventBus, QueueSink  # noqa: E402
from nx47_pipeline.telemetry.console import ConsoleSink  # noqa: E402
from nx47_pipeline.telemetry.events import EventKind, ProgressPayload  # noqa: E402
from nx47_pipeline.telemetry.journal import JournalSink, verify_journal  # noqa: E402
from nx47_pipeline.telemetry.facade import Telemetry  # noqa: E402
from nx47_pipeline.telemetry.trace import array_trace  # noqa: E402
from _common import write_section, load_note  # noqa: E402


class Null(io.TextIOBase):
    def write(self, s):
        return len(s)


def machine() -> str:
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except Exception:
        ram = "RAM unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        commit = "unknown"
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {ram}, "
            f"Python {platform.python_version()}; {_dt.date.today().isoformat()}, commit {commit}.")


# ----------------------------------------------------------------------
def events_per_second(n: int, sinks: str, tmp: Path) -> float:
    bus = EventBus()
    if "queue" in sinks:
        bus.attach(QueueSink(maxsize=2000))
    journal = None
    if "journal" in sinks:
        journal = JournalSink(tmp / f"j-{sinks}-{n}.jsonl")
        bus.attach(journal)
    if "console" in sinks:
        bus.attach(ConsoleSink(Null()))
    t0 = time.perf_counter()
    for i in range(n):
        bus.publish(
            EventKind.PROGRESS_UPDATE,
            ProgressPayload(step="features", step_index=3, step_count=9, step_done=i,
                            step_total=n, file=f"{1000000 + i // 50}", file_done=i // 50,
                            file_total=n // 50, substep="hessian", substep_done=i % 9,
                            substep_total=9, global_=i / n, rate=12.5, eta_s=300.0),
            stage="features",
        )
    dt = time.perf_counter() - t0
    bus.close()
    if journal is not None:
        assert verify_journal(journal.path).ok
    return n / dt


# ----------------------------------------------------------------------
def compute_loop(tel: Telemetry, vols: list[np.ndarray], *, per_slice: bool) -> None:
    filters = [
        ("gauss1", lambda v: ndi.gaussian_filter(v, 1.0)),
        ("gauss2", lambda v: ndi.gaussian_filter(v, 2.0)),
        ("gauss_grad", lambda v: ndi.gaussian_gradient_magnitude(v, 1.5)),
        ("laplace", lambda v: ndi.gaussian_laplace(v, 1.5)),
        ("uniform", lambda v: ndi.uniform_filter(v, 5)),
        ("median", lambda v: ndi.median_filter(v, 3)),
    ]
    with tel.stage("features", total=len(vols)):
        for i, vol in enumerate(vols):
            tel.trace(f"vol{i}", vol)
            v = vol.astype(np.float32)
            for k, (fname, fn) in enumerate(filters):
                if per_slice:
                    out = np.empty_like(v)
                    for z in range(v.shape[0]):
                        # the slice-wise 2-D part of the filter, progress per slice
                        out[z] = fn(v[z])
                        tel.progress(step_done=i + (k + z / v.shape[0]) / len(filters),
                                     file=f"vol{i}", file_done=i, file_total=len(vols),
                                     substep=fname, substep_done=k, substep_total=len(filters))
                else:
                    out = fn(v)
                    tel.progress(step_done=i + (k + 1) / len(filters), file=f"vol{i}",
                                 file_done=i, file_total=len(vols), substep=fname,
                                 substep_done=k + 1, substep_total=len(filters))
                del out


def run_loop(enabled: bool, vols, tmp: Path, *, per_slice: bool, tag: str) -> float:
    out = tmp / f"run-{tag}-{enabled}-{time.perf_counter_ns()}"
    tel = Telemetry(out_dir=out, stages=[("features", 1.0)], console_stream=Null(),
                    enabled=enabled, budget_s=3600.0)
    t0, c0 = time.perf_counter(), time.process_time()
    tel.start(run_id="bench")
    compute_loop(tel, vols, per_slice=per_slice)
    tel.finish("ok")
    return time.perf_counter() - t0, time.process_time() - c0


def overhead(vols, tmp: Path, repeats: int, *, per_slice: bool, tag: str):
    on, off = [], []
    run_loop(False, vols[:1], tmp, per_slice=per_slice, tag="warm")
    for r in range(repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        for enabled in order:
            (on if enabled else off).append(run_loop(enabled, vols, tmp, per_slice=per_slice,
                                                     tag=tag))
    res = {}
    for label, fn in (("median", statistics.median), ("min", min)):
        for what, idx in (("wall", 0), ("cpu", 1)):
            a = fn(x[idx] for x in on)
            b = fn(x[idx] for x in off)
            res[(label, what)] = (a, b, 100.0 * (a - b) / b)
    return res, on, off


def fixed_cost(tmp: Path, repeats: int = 10) -> float:
    """Median seconds of start() + an empty stage + finish()."""
    times = []
    for r in range(repeats):
        tel = Telemetry(out_dir=tmp / f"fixed-{r}", stages=[("features", 1.0)],
                        console_stream=Null(), budget_s=3600.0)
        t0 = time.perf_counter()
        tel.start(run_id="bench")
        with tel.stage("features"):
            pass
        tel.finish("ok")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report_cost(tmp: Path, n: int, interval: float) -> float:
    """Microseconds per progress() call with the given progress throttle."""
    tel = Telemetry(out_dir=tmp / f"cost-{interval}", stages=[("features", 1.0)],
                    console_stream=Null(), progress_interval_s=interval)
    tel.start(run_id="bench")
    with tel.stage("features", total=n):
        t0 = time.perf_counter()
        for i in range(n):
            tel.progress(step_done=i + 1, file="1407735", file_done=1, file_total=8,
                         substep="hessian", substep_done=2, substep_total=6)
        dt = time.perf_counter() - t0
    tel.finish("ok")
    return 1e6 * dt / n


def count_events(tmp: Path, tag: str) -> int:
    runs = sorted(tmp.glob(f"run-{tag}-True-*"))
    if not runs:
        return 0
    return sum(1 for _ in open(runs[-1] / "journal.jsonl", "rb"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_events = 20_000 if args.quick else 100_000
    side = 64 if args.quick else 96
    n_vols = 4 if args.quick else 6
    repeats = 3 if args.quick else 7
    rng = np.random.default_rng(47)
    vols = [rng.integers(0, 255, (side,) * 3, dtype=np.uint8) for _ in range(n_vols)]

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rates = {s: events_per_second(n_events, s, tmp)
                 for s in ("none", "queue", "journal", "journal+queue+console")}
        res_file, on, off = overhead(vols, tmp, repeats, per_slice=False, tag="file")
        ev_file = count_events(tmp, "file")
        res_slice, _, _ = overhead(vols[: max(2, n_vols // 2)], tmp, repeats,
                                            per_slice=True, tag="slice")
        ev_slice = count_events(tmp, "slice")
        fixed = fixed_cost(tmp)
        cost_throttled = report_cost(tmp, n_events // 4, 0.25)
        cost_published = report_cost(tmp, n_events // 4, 0.0)
        t0 = time.perf_counter()
        for v in vols:
            array_trace("v", v)
        trace_per_vol = (time.perf_counter() - t0) / len(vols)
    off_med = res_file[("median", "wall")][1]
    estimate_s = (fixed + ev_file * cost_published * 1e-6 + n_vols * 6 * cost_throttled * 1e-6
                  + n_vols * trace_per_vol)
    n_reports_slice = max(2, n_vols // 2) * 6 * side

    traces = []
    for dtype in (np.uint8, np.float32):
        a = (rng.random((320, 320, 320), dtype=np.float32) * 255).astype(dtype)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            p = array_trace("vol", a)
            times.append(time.perf_counter() - t0)
        traces.append((np.dtype(dtype).name, a.nbytes / 2**20, min(times), p.digest_method))
        del a

    lines = [
        "## Telemetry: event throughput and overhead",
        "",
        f"Event throughput: {n_events} PROGRESS_UPDATE events published from one thread; "
        "the queue (maxsize 2000) is never drained, so it coalesces; the journal flushes "
        "every line (no fsync) and is verified afterwards.",
        "",
        "| sinks | events/s | µs/event |",
        "| --- | ---: | ---: |",
    ]
    for s, r in rates.items():
        lines.append(f"| {s} | {r:,.0f} | {1e6 / r:.1f} |")
    lines += [
        "",
        f"Overhead on a representative compute loop: {n_vols} volumes of {side}³ uint8, "
        "6 scipy.ndimage filters each (float32), PROGRESS_UPDATE after every filter with "
        "file and sub-step counters, ARRAY_TRACE of every input volume. Telemetry with "
        "default settings (journal, console, heartbeat 15 s, progress throttle 0.25 s) "
        f"versus `enabled=False`, interleaved, {repeats} runs each.",
        "",
        "| loop | reports | events journaled | statistic | on (s) | off (s) | overhead |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for loop, res, reports, evs in (("per filter", res_file, n_vols * 6, ev_file),
                                    ("per z-slice (storm)", res_slice, n_reports_slice,
                                     ev_slice)):
        for key in (("median", "wall"), ("min", "wall"), ("median", "cpu")):
            a, b, pct = res[key]
            lines.append(f"| {loop} | {reports} | {evs} | {key[0]} {key[1]} time | {a:.3f} "
                         f"| {b:.3f} | {pct:+.2f} % |")
    lines += [
        "",
        f"Per-filter runs (wall s), on: {', '.join(f'{x[0]:.3f}' for x in on)}; "
        f"off: {', '.join(f'{x[0]:.3f}' for x in off)}.",
        "",
        "Where the overhead comes from (default settings):",
        "",
        "| cost | value |",
        "| --- | ---: |",
        f"| start() + empty stage + finish() (journal open, RUN_START, CONFIG, heartbeat "
        f"thread, plan.json writes, final beat, EXEC_COMPLETE) | {1e3 * fixed:.1f} ms per run |",
        f"| progress() held back by the 0.25 s throttle (plan update, heartbeat notice, "
        f"cancel check) | {cost_throttled:.1f} µs |",
        f"| progress() published (PROGRESS_UPDATE through journal + console) | "
        f"{cost_published:.1f} µs |",
        f"| array_trace of one {side}³ uint8 input | {1e3 * trace_per_vol:.2f} ms |",
        f"| **estimated overhead of the per-filter loop** = fixed + {ev_file} events × "
        f"published cost + {n_vols * 6} reports × held-back cost + {n_vols} traces | "
        f"**{1e3 * estimate_s:.1f} ms = {100 * estimate_s / off_med:.2f} % of {off_med:.2f} s** |",
        "",
        "`array_trace` on 320³ volumes (best of 3):",
        "",
        "| dtype | MiB | ms | digest |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, mib, t, method in traces:
        lines.append(f"| {name} | {mib:.0f} | {1e3 * t:.1f} | {method} |")
    lines += [
        "",
        "Target: overhead under 1 % of wall time with default settings. On a machine "
        "shared with other busy processes the run-to-run spread of the wall time (listed "
        "above) is several times larger than the overhead, so the on/off wall difference is "
        "noise; the process CPU time and the estimate built from the measured components "
        "are the reliable figures. The on/off difference of a short loop includes the fixed per-run cost above, which a real "
        "run (minutes to hours) amortises; a difference smaller than the spread of the "
        "individual runs is noise. The z-slice storm is a stress case (a 2-D filter per "
        "slice takes well under a millisecond here), where the throttle keeps the journal "
        "small and each held-back report costs a few µs.",
        "",
        machine() + " " + load_note(),
        "",
    ]
    write_section(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
