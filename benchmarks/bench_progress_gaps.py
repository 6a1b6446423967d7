"""Longest silence between PROGRESS_UPDATE events per stage of a real run.

Generates a slab dataset (default: 4 training pairs and 1 test volume at
320³: 3 train + 1 validation after the split; ``--quick``: 128³), runs
``nx47 run --no-unet`` on it under ``nice`` and reads the run's
``journal.jsonl``: for every stage, from its STEP begin to its STEP end, the
longest time without a PROGRESS_UPDATE of that stage
(:func:`nx47_pipeline.telemetry.gaps.progress_gaps`), where it happened,
and how many silences were longer than the run's ``progress_max_gap_s``
(5 s).  HEARTBEAT events do not count.

``--journal PATH`` only analyses an existing journal (no run); ``--data``
reuses a dataset.  Command::

    python benchmarks/bench_progress_gaps.py --out benchmarks/results/progress_gaps.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from _common import REPO, git_commit, load_note, machine, write_section

sys.path.insert(0, str(REPO))

from nx47_pipeline.config import RunConfig  # noqa: E402
from nx47_pipeline.data.demo import generate_demo_dataset  # noqa: E402
from nx47_pipeline.telemetry.events import EventKind  # noqa: E402
from nx47_pipeline.telemetry.gaps import progress_gaps, silences  # noqa: E402
from nx47_pipeline.telemetry.journal import read_journal, verify_journal  # noqa: E402


def _cell(text: str, width: int = 70) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


class CpuSamples:
    """(wall time, CPU seconds) samples of a process."""

    def __init__(self, samples: list[tuple[float, float]] | None = None) -> None:
        self.samples = list(samples or [])

    @classmethod
    def read(cls, path: Path) -> "CpuSamples":
        """Samples written one ``<time> <cpu seconds>`` pair per line."""
        return cls([(float(a), float(b)) for a, b in (ln.split() for ln in path.read_text().splitlines() if ln)])

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds the process used from wall time ``t0`` to ``t1`` (interpolated)."""
        if len(self.samples) < 2:
            return None
        if getattr(self, "_n", 0) != len(self.samples):  # arrays built once per sample count
            self._ts = np.array([a for a, _ in self.samples])
            self._cs = np.array([b for _, b in self.samples])
            self._n = len(self.samples)
        ts, cs = self._ts, self._cs
        if t1 < ts[0] or t0 < ts[0] or t0 > ts[-1]:
            return None
        return float(np.interp(t1, ts, cs) - np.interp(t0, ts, cs))


class CpuSampler(CpuSamples):
    """Samples a process's CPU seconds (user + system, all threads) against
    the wall clock every ``every_s`` on a daemon thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        super().__init__()
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c = self._proc.cpu_times()
            except psutil.Error:
                return
            self.samples.append((time.time(), c.user + c.system))
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run(data: Path, out: Path, *, nice: int, sets: list[str]) -> tuple[float, tuple[float, float, float],
                                                                       tuple[float, float, float], CpuSampler]:
    """``nx47 run --no-unet`` on ``data`` into ``out``: (seconds, load before, load after, CPU samples)."""
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(data),
           "--out", str(out), "--no-unet", "--quiet"] + [a for s in sets for a in ("--set", s)]
    load0 = os.getloadavg()
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    sampler = CpuSampler(proc.pid)  # ``nice`` execs the interpreter: same pid
    rc = proc.wait()
    sampler.stop()
    if rc != 0:
        raise SystemExit(f"nx47 run exited with {rc}")
    return time.monotonic() - t, load0, os.getloadavg(), sampler


def table(journal: Path, limit_s: float, sampler: CpuSamples | None = None) -> tuple[list[str], float]:
    events = read_journal(journal)
    gaps = progress_gaps(events, limit_s=limit_s)
    cpu_col = sampler is not None
    head = ["stage", "ran (s)", "PROGRESS_UPDATE events", "longest gap (s)", "after", "before",
            f"gaps > {limit_s:g} s"]
    if cpu_col:
        head += ["CPU s in that gap", "most CPU s in one gap"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: |" + (" ---: | ---: |" if cpu_col else "")]
    every = silences(events, open_stages=True) if cpu_col else []
    for g in gaps:
        row = (f"| {g.stage} | {g.stage_s:.1f} | {g.updates} | **{g.gap_s:.2f}** | {_cell(g.after) or '(begin)'} "
               f"| {_cell(g.before) or '(end)'} | {g.over} |")
        if cpu_col:
            c = sampler.cpu_between(g.longest.start_ts, g.longest.end_ts)
            mine = [sampler.cpu_between(x.start_ts, x.end_ts) for x in every
                    if x.stage == g.stage and x.run == g.longest.run]
            most = max((m for m in mine if m is not None), default=None)
            row += f" {'-' if c is None else f'{c:.2f}'} | {'-' if most is None else f'{most:.2f}'} |"
        lines.append(row)
    pre = [x for x in every or silences(events, open_stages=True) if x.stage == "preflight"]
    ended = {g.stage for g in gaps}
    for name in dict.fromkeys(x.stage for x in silences(events, open_stages=True) if x.stage not in ended):
        xs = [x for x in silences(events, open_stages=True) if x.stage == name]
        w = max(xs, key=lambda x: x.seconds)
        row = (f"| {name} (still running at the journal's end) | {xs[-1].end_ts - xs[0].start_ts:.1f} | "
               f"{len(xs)} | **{w.seconds:.2f}** | {_cell(w.after) or '(begin)'} | {_cell(w.before)} | "
               f"{sum(1 for x in xs if x.seconds > limit_s)} |")
        if cpu_col:
            c = sampler.cpu_between(w.start_ts, w.end_ts)
            most = max((m for x in xs if (m := sampler.cpu_between(x.start_ts, x.end_ts)) is not None), default=None)
            row += f" {'-' if c is None else f'{c:.2f}'} | {'-' if most is None else f'{most:.2f}'} |"
        lines.append(row)
    if pre:
        lines += ["", "The preflight runs every stage's work on its slice (one volume each at this size); its "
                  "silences by the phase of the report that ended them:", "",
                  "| preflight phase | silences | longest (s) | after | before | over "
                  f"{limit_s:g} s |" + (" CPU s in the longest | most CPU s in one |" if cpu_col else ""),
                  "| --- | ---: | ---: | --- | --- | ---: |" + (" ---: | ---: |" if cpu_col else "")]
        by: dict[str, list] = {}
        for x in pre:
            by.setdefault((x.before or x.after or "end").split(":")[0].split(" |")[0].strip(), []).append(x)
        for name, xs in by.items():
            w = max(xs, key=lambda x: x.seconds)
            row = (f"| {_cell(name, 30)} | {len(xs)} | **{w.seconds:.2f}** | {_cell(w.after) or '(begin)'} | "
                   f"{_cell(w.before) or '(end)'} | {sum(1 for x in xs if x.seconds > limit_s)} |")
            if cpu_col:
                c = sampler.cpu_between(w.start_ts, w.end_ts)
                most = max((m for x in xs if (m := sampler.cpu_between(x.start_ts, x.end_ts)) is not None),
                           default=None)
                row += f" {'-' if c is None else f'{c:.2f}'} | {'-' if most is None else f'{most:.2f}'} |"
            lines.append(row)
    alls = silences(events, open_stages=True)
    worst = max((x.seconds for x in alls), default=0.0)
    n_beats = sum(1 for e in events if e.kind is EventKind.HEARTBEAT)
    lines.append("")
    lines.append(f"Longest gap of the run: **{worst:.2f} s** ({sum(1 for x in alls if x.seconds > limit_s)} gaps over "
                 f"{limit_s:g} s); {len(events)} events, {n_beats} heartbeats; `nx47 verify-journal`: "
                 f"{'ok' if verify_journal(journal).ok else 'FAILED'}.")
    if cpu_col:
        most_all = max((c for x in every if (c := sampler.cpu_between(x.start_ts, x.end_ts)) is not None),
                       default=0.0)
        lines.append(f"The most CPU the run's process used within one silence: **{most_all:.2f} CPU-seconds** "
                     "(all its threads, sampled every 0.1 s): on an otherwise idle machine a silence lasts at "
                     "most about that long where the work runs on one core, less where it runs on two.")
    return lines, worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "progress_gaps.md")
    ap.add_argument("--quick", action="store_true", help="128³ instead of 320³")
    ap.add_argument("--shape", type=int, default=None, help="edge of the generated volumes")
    ap.add_argument("--data", type=Path, default=None, help="reuse this dataset")
    ap.add_argument("--journal", type=Path, default=None, help="only analyse this journal")
    ap.add_argument("--nice", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="passed to nx47 run (e.g. a smaller search grid on a busy machine)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the run's journal.jsonl here")
    ap.add_argument("--cpu-samples", type=Path, default=None,
                    help="with --journal: the run process's CPU samples, '<time> <cpu seconds>' per line")
    args = ap.parse_args()
    limit = RunConfig().progress_max_gap_s
    shape = args.shape or (128 if args.quick else 320)
    head = ["## Progress gaps of a run (longest silence per stage)", ""]
    if args.journal is not None:
        lines, worst = table(args.journal, limit,
                             None if args.cpu_samples is None else CpuSamples.read(args.cpu_samples))
        write_section(args.out, head + [f"Journal `{args.journal}`.", ""] + lines + [
            "", f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {git_commit()}."])
        return 0
    with tempfile.TemporaryDirectory(prefix="nx47-gaps-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            generate_demo_dataset(data, n_train=4, n_test=1, shape=(shape,) * 3, seed=7)
        out = Path(tmp) / "run"
        secs, load0, load1, sampler = run(data, out, nice=args.nice, sets=args.sets)
        lines, worst = table(out / "journal.jsonl", limit, sampler)
        if args.keep is not None:
            shutil.copyfile(out / "journal.jsonl", args.keep)
    head += [
        f"`nx47 run --no-unet` ("
        + (f"default settings except `{' '.join('--set ' + x for x in args.sets)}`" if args.sets else "default settings")
        + f", under `nice -n {args.nice}`) on "
        + ("a generated dataset of 4 training pairs (3 train + 1 validation after the split) and 1 test "
           f"volume at {shape}³" if args.data is None else f"`{args.data}`")
        + f"; the run took {secs:.0f} s. For each stage, from its STEP begin to its STEP end, the longest "
        "time without a PROGRESS_UPDATE of that stage (HEARTBEAT events do not count), what the last report "
        "before it and the first after it said, and how many silences exceeded the run's "
        f"`progress_max_gap_s` ({limit:g} s). Command: `python benchmarks/bench_progress_gaps.py"
        + (" --quick" if args.quick else "") + "".join(f" --set {x}" for x in args.sets) + "`.", ""]
    write_section(args.out, head + lines + [
        "",
        f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {git_commit()}. "
        f"1-minute load average {load0[0]:.2f} when the run started and {load1[0]:.2f} when it ended "
        f"(5-minute {load1[1]:.2f}) on {os.cpu_count()} cores: the machine was shared, so the gaps are "
        "upper bounds of a quiet machine's. " + load_note()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
