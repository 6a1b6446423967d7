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
import time
from pathlib import Path

from _common import REPO, git_commit, load_note, machine, write_section

sys.path.insert(0, str(REPO))

from nx47_pipeline.config import RunConfig  # noqa: E402
from nx47_pipeline.data.demo import generate_demo_dataset  # noqa: E402
from nx47_pipeline.telemetry.events import EventKind  # noqa: E402
from nx47_pipeline.telemetry.gaps import progress_gaps  # noqa: E402
from nx47_pipeline.telemetry.journal import read_journal, verify_journal  # noqa: E402


def _cell(text: str, width: int = 70) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def run(data: Path, out: Path, *, nice: int, sets: list[str]) -> tuple[float, tuple[float, float, float],
                                                                       tuple[float, float, float]]:
    """``nx47 run --no-unet`` on ``data`` into ``out``: (seconds, load before, load after)."""
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(data),
           "--out", str(out), "--no-unet", "--quiet"] + [a for s in sets for a in ("--set", s)]
    load0 = os.getloadavg()
    t = time.monotonic()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.monotonic() - t, load0, os.getloadavg()


def table(journal: Path, limit_s: float) -> tuple[list[str], float]:
    events = read_journal(journal)
    gaps = progress_gaps(events, limit_s=limit_s)
    lines = ["| stage | ran (s) | PROGRESS_UPDATE events | longest gap (s) | after | before | gaps > "
             f"{limit_s:g} s |", "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for g in gaps:
        lines.append(f"| {g.stage} | {g.stage_s:.1f} | {g.updates} | **{g.gap_s:.2f}** | {_cell(g.after) or '(begin)'} "
                     f"| {_cell(g.before) or '(end)'} | {g.over} |")
    worst = max((g.gap_s for g in gaps), default=0.0)
    n_beats = sum(1 for e in events if e.kind is EventKind.HEARTBEAT)
    lines.append("")
    lines.append(f"Longest gap of the run: **{worst:.2f} s** ({sum(g.over for g in gaps)} gaps over "
                 f"{limit_s:g} s); {len(events)} events, {n_beats} heartbeats; `nx47 verify-journal`: "
                 f"{'ok' if verify_journal(journal).ok else 'FAILED'}.")
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
    args = ap.parse_args()
    limit = RunConfig().progress_max_gap_s
    shape = args.shape or (128 if args.quick else 320)
    head = ["## Progress gaps of a run (longest silence per stage)", ""]
    if args.journal is not None:
        lines, worst = table(args.journal, limit)
        write_section(args.out, head + [f"Journal `{args.journal}`.", ""] + lines + [
            "", f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; commit {git_commit()}."])
        return 0
    with tempfile.TemporaryDirectory(prefix="nx47-gaps-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            generate_demo_dataset(data, n_train=4, n_test=1, shape=(shape,) * 3, seed=7)
        out = Path(tmp) / "run"
        secs, load0, load1 = run(data, out, nice=args.nice, sets=args.sets)
        lines, worst = table(out / "journal.jsonl", limit)
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
