"""Dashboard under a flood: widget syncs per second and event -> widget latency.

The producer is a :class:`nx47_widgets.threaded.ThreadedRunner` whose job
publishes events on an :class:`nx47_pipeline.bus.EventBus` as fast as it can
(the worst a pipeline could do); the consumer is the dashboard's
:class:`nx47_widgets.pump.UIPump` applying each batch to a
:class:`nx47_widgets.state.DashboardState` and to real ipywidgets (a progress
bar, a label, a log area).  A widget sync is one trait change sent to the
front end (counted with ``observe``).

Run: ``python benchmarks/bench_dashboard.py --out benchmarks/results/dashboard.md
[--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from nx47_pipeline.telemetry.bus import EventBus  # noqa: E402
from nx47_pipeline.config import RunConfig  # noqa: E402
from nx47_pipeline.telemetry.events import EventKind, MessagePayload, ProgressPayload  # noqa: E402
from nx47_widgets.pump import UIPump  # noqa: E402
from nx47_widgets.threaded import ThreadedRunner  # noqa: E402
from nx47_widgets.state import DashboardState  # noqa: E402
from _common import git_commit, machine, write_section, load_note  # noqa: E402


class Widgets:
    """The few widgets a flush touches, with a count of trait syncs."""

    def __init__(self) -> None:
        import ipywidgets as w

        self.bar = w.FloatProgress(min=0.0, max=1.0)
        self.label = w.HTML()
        self.log = w.Textarea()
        self.syncs = 0
        for widget in (self.bar, self.label, self.log):
            widget.observe(self._count, names="value")

    def _count(self, change) -> None:
        self.syncs += 1


def progress(i: int, n: int) -> ProgressPayload:
    return ProgressPayload(step="features", step_index=2, step_count=9, step_done=i,
                           step_total=n, file=f"{1000000 + i % 50}", file_done=i % 50,
                           file_total=50, global_=i / n, message="flood")


def make_flush(state: DashboardState, widgets: Widgets, latencies: list[float],
               counts: dict[str, int]):
    def flush(events, tick) -> None:
        changed = state.apply_many(events)
        now = time.time()
        for e in events:
            latencies.append(now - e.ts)
            counts[e.kind.value] = counts.get(e.kind.value, 0) + 1
        if "progress" in changed or tick:
            last = events[-1] if events else None
            if last is not None and last.kind is EventKind.PROGRESS_UPDATE:
                widgets.bar.value = float(last.payload.global_)
            widgets.label.value = f"seq {state.last_seq}, {state.n_events} events"
        if "log" in changed:
            widgets.log.value = "\n".join(x.line() for x in state.log.visible(20))
    return flush


def flood(n_events: int, warn_every: int, interval: float) -> dict:
    """Publish ``n_events`` as fast as possible through a ThreadedRunner."""
    state, widgets, lat, counts = DashboardState(), Widgets(), [], {}
    stats: dict = {}

    def job(config, cancel, sink):
        bus = EventBus()
        bus.attach(sink)
        t0 = time.perf_counter()
        n_warn = 0
        for i in range(n_events):
            if warn_every and i % warn_every == 0:
                bus.publish(EventKind.WARNING, MessagePayload(message=f"w{i}", subject=str(i)),
                            stage="features")
                n_warn += 1
            else:
                bus.publish(EventKind.PROGRESS_UPDATE, progress(i, n_events), stage="features")
        stats["publish_s"] = time.perf_counter() - t0
        stats["n_warn"] = n_warn

    runner = ThreadedRunner(RunConfig(), job=job, queue_maxsize=2000)
    pump = UIPump(runner.drain, make_flush(state, widgets, lat, counts), interval=interval)
    t0 = time.perf_counter()
    pump.start()
    runner.start()
    runner.join(600)
    # let the pump empty the queue
    deadline = time.monotonic() + 5
    while runner.sink.qsize() and time.monotonic() < deadline:
        time.sleep(interval)
    time.sleep(2 * interval)
    pump.stop()
    wall = time.perf_counter() - t0
    return {
        "n_events": n_events,
        "publish_s": stats["publish_s"],
        "events_per_s": n_events / stats["publish_s"],
        "wall_s": wall,
        "flushes": pump.flushes,
        "flushes_per_s": pump.flushes / wall,
        "syncs": widgets.syncs,
        "syncs_per_s": widgets.syncs / wall,
        "applied": pump.events,
        "dropped": runner.sink.dropped,
        "n_warn": stats["n_warn"],
        "warn_applied": counts.get("WARNING", 0),
        "pump_errors": len(pump.errors),
        "lat_ms_p50": 1000 * statistics.median(lat) if lat else float("nan"),
        "lat_ms_max": 1000 * max(lat) if lat else float("nan"),
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def latency(rate_hz: float, duration_s: float, interval: float) -> dict:
    """Events at a steady rate: time from publish to the end of the flush."""
    state, widgets, lat = DashboardState(), Widgets(), []

    def job(config, cancel, sink):
        bus = EventBus()
        bus.attach(sink)
        n = int(rate_hz * duration_s)
        t_next = time.perf_counter()
        for i in range(n):
            bus.publish(EventKind.WARNING, MessagePayload(message=f"ev {i}", subject=str(i)),
                        stage="search")
            t_next += 1.0 / rate_hz
            time.sleep(max(0.0, t_next - time.perf_counter()))

    runner = ThreadedRunner(RunConfig(), job=job)
    pump = UIPump(runner.drain, make_flush(state, widgets, lat, {}), interval=interval)
    pump.start()
    runner.start()
    runner.join(duration_s + 30)
    time.sleep(3 * interval)
    pump.stop()
    lat_ms = sorted(1000 * x for x in lat)
    q = lambda p: lat_ms[min(len(lat_ms) - 1, int(p * len(lat_ms)))]  # noqa: E731
    return {"n": len(lat_ms), "rate_hz": rate_hz, "p50": q(0.5), "p95": q(0.95),
            "max": lat_ms[-1], "interval_ms": 1000 * interval}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else 100_000
    interval = 0.1
    fl = flood(n, warn_every=1000, interval=interval)
    lt = latency(50.0, 3.0 if args.quick else 10.0, interval)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Dashboard under a flood",
        "",
        f"Machine: {machine()}. Date: {now}. Commit: {git_commit()}. " + load_note(),
        "",
        f"A ThreadedRunner job publishes {n:,} events (PROGRESS_UPDATE, one WARNING every "
        f"1,000) as fast as it can into the dashboard's QueueSink (maxsize 2000); the UIPump "
        f"(interval {interval * 1000:.0f} ms) applies them to DashboardState and to three real "
        "ipywidgets. A widget sync is one `value` trait change (no front end is attached, "
        "so the cost of sending the comm message itself is not included).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| events published per second (bus -> queue sink) | {fl['events_per_s']:,.0f} |",
        f"| publish time for {n:,} events | {fl['publish_s']:.2f} s |",
        f"| UI flushes per second | {fl['flushes_per_s']:.1f} |",
        f"| widget syncs per second | {fl['syncs_per_s']:.1f} |",
        f"| events applied by the UI / coalesced away | {fl['applied']:,} / {fl['dropped']:,} |",
        f"| WARNING events (must-deliver) published / reaching the UI | "
        f"{fl['n_warn']} / {fl['warn_applied']} |",
        f"| event -> widget latency under the flood, median / max | "
        f"{fl['lat_ms_p50']:.0f} ms / {fl['lat_ms_max']:.0f} ms |",
        f"| event -> widget latency at {lt['rate_hz']:.0f} events/s, median / p95 / max "
        f"(n={lt['n']}) | {lt['p50']:.0f} / {lt['p95']:.0f} / {lt['max']:.0f} ms |",
        f"| pump errors | {fl['pump_errors']} |",
        f"| process RSS after the flood | {fl['rss_mb']:.0f} MiB |",
        "",
    ]
    write_section(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
