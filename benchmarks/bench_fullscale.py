"""The seed's run for real: 786 pairs at full coverage, measured.

Two steps, because the run takes hours and its report is written after:

``run``
    Starts ``nx47 run --data DATA --out OUT --max-train-volumes 0
    --max-val-volumes 0 --budget-s 32400 --no-unet`` (or, with
    ``--papermill``, ``dashboard.ipynb`` headless under papermill with
    ``KAGGLE_KERNEL_RUN_TYPE=Batch`` and caps 160 / 40) as one process and
    samples its process tree every 0.5 s into ``OUT.samples.tsv``: wall
    time, resident memory (all processes of the tree), CPU seconds and the
    1-minute load average.  The run's console (or the notebook's output
    stream, through papermill's ``--log-output``) goes to ``OUT.console.log``
    with the wall time at which each line arrived.

``report``
    Reads the run's folder (``journal.jsonl``, ``plan.json``,
    ``stats.json``) and the samples and writes the markdown section
    (``--md``), a per-stage journal summary (``--summary``, JSON) and copies
    of ``plan.json`` / ``stats.json`` (``--keep DIR``): the dataset
    (distinct volumes, hard links), the first projection against the actual
    remainder, wall time per stage projected and actual, the longest
    progress gap per stage, peak RSS per stage and over the first and last
    50 pairs of the per-volume stages, the validation score, the journal's
    head hash and ``nx47 verify-journal``.

Commands::

    python benchmarks/bench_fullscale.py run --data full786 --out runs/full786
    python benchmarks/bench_fullscale.py report --out runs/full786 --data full786 \\
        --md benchmarks/results/fullscale.md --summary benchmarks/results/fullscale/journal_summary.json \\
        --keep benchmarks/results/fullscale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL_ARGS = ("--max-train-volumes", "0", "--max-val-volumes", "0", "--budget-s", "32400", "--no-unet")


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def sample(pid: int, path: Path, stop: threading.Event, every_s: float = 0.5) -> None:
    """``<wall time> <rss bytes> <cpu seconds> <load1>`` lines every ``every_s``
    for the process tree of ``pid`` (CPU of children that ended is lost: an
    under-count, the RSS is what matters)."""
    root = psutil.Process(pid)
    with path.open("w", buffering=1) as fh:
        while not stop.is_set():
            rss = cpu = 0.0
            for p in _tree(root):
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                except psutil.Error:
                    pass
            fh.write(f"{time.time():.3f} {int(rss)} {cpu:.2f} {os.getloadavg()[0]:.2f}\n")
            stop.wait(every_s)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    data = Path(args.data).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NX47_")}
    if args.papermill:
        out.mkdir(parents=True, exist_ok=True)
        env["KAGGLE_KERNEL_RUN_TYPE"] = "Batch"
        cmd = [sys.executable, "-m", "papermill", str(REPO / "dashboard.ipynb"), str(out / "executed.ipynb"),
               "--log-output", "--progress-bar", "-p", "DATA_ROOT", str(data), "-p", "OUT_DIR", str(out),
               "-p", "MAX_TRAIN_VOLUMES", str(args.max_train), "-p", "MAX_VAL_VOLUMES", str(args.max_val),
               "-p", "BUDGET_S", str(args.budget_s), "-p", "USE_UNET", "False"]
    else:
        cmd = [sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(data), "--out", str(out),
               *FULL_ARGS, *args.extra]
    console = Path(str(out) + ".console.log")
    samples = Path(str(out) + ".samples.tsv")
    print(" ".join(cmd), flush=True)
    stop = threading.Event()
    with console.open("w", buffering=1) as log:
        log.write(f"# {time.time():.3f} start: {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        th = threading.Thread(target=sample, args=(proc.pid, samples, stop), daemon=True)
        th.start()
        for line in proc.stdout:
            log.write(f"{time.time():.3f} {line}")
        rc = proc.wait()
        stop.set()
        th.join()
        log.write(f"# {time.time():.3f} exit {rc}\n")
    return rc


# ---------------------------------------------------------------- report

STAGES = ("discovery", "preflight", "features", "search", "fit_prox", "unet", "validate", "segment", "package")
PER_VOLUME = ("features", "validate", "segment")
EDGE = 50  # "the first 50 pairs" / "the last 50"


def dataset_facts(data: Path) -> dict:
    """Pairs, test volumes, csv rows and how many files are distinct volumes."""
    import csv

    rows = list(csv.DictReader((data / "train.csv").open()))
    images = sorted((data / "train_images").glob("*.tif"))
    tests = sorted((data / "test_images").glob("*.tif")) if (data / "test_images").is_dir() else []
    inodes = {os.stat(p).st_ino for p in images + tests}
    shapes: dict[str, int] = {}
    import tifffile

    for p in images + tests:
        with tifffile.TiffFile(p) as tf:
            key = "x".join(str(v) for v in (len(tf.pages), *tf.pages[0].shape))
        shapes[key] = shapes.get(key, 0) + 1
    return {"csv_rows": len(rows), "pairs": len(images), "test": len(tests), "distinct_volumes": len(inodes),
            "linked_files": len(images) + len(tests) - len(inodes),
            "scrolls": dict(sorted(((r["scroll_id"], sum(1 for q in rows if q["scroll_id"] == r["scroll_id"]))
                                    for r in rows), key=lambda kv: -kv[1])),
            "shapes": shapes,
            "deprecated": len(list((data / "deprecated_train_images").glob("*.tif")))
            if (data / "deprecated_train_images").is_dir() else 0}


class Samples:
    """The launcher's ``<time> <rss> <cpu> <load>`` samples."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        a = np.array([[float(v) for v in r] for r in rows]) if rows else np.zeros((0, 4))
        self.t, self.rss, self.cpu, self.load = a[:, 0], a[:, 1], a[:, 2], a[:, 3]

    def peak_mib(self, t0: float, t1: float) -> float | None:
        m = (self.t >= t0) & (self.t <= t1)
        return float(self.rss[m].max() / 2**20) if m.any() else None

    def load_range(self, t0: float, t1: float) -> tuple[float, float] | None:
        m = (self.t >= t0) & (self.t <= t1)
        return (float(self.load[m].min()), float(self.load[m].max())) if m.any() else None


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def analyse(out: Path, samples: Samples | None) -> dict:
    """Everything the report states about one run folder."""
    from nx47_pipeline.telemetry.events import EventKind, StepPhase
    from nx47_pipeline.telemetry.gaps import progress_gaps
    from nx47_pipeline.telemetry.journal import read_journal, verify_journal

    events = read_journal(out / "journal.jsonl")
    ver = verify_journal(out / "journal.jsonl")
    kinds: dict[str, int] = {}
    for ev in events:
        kinds[ev.kind.value] = kinds.get(ev.kind.value, 0) + 1
    steps: dict[str, dict] = {}
    for ev in events:
        if ev.kind is EventKind.STEP:
            st = steps.setdefault(str(ev.stage), {})
            if ev.payload.phase == StepPhase.BEGIN:
                st["begin_ts"] = ev.ts
            else:
                st["end_ts"] = ev.ts
                st["status"] = str(getattr(ev.payload.status, "value", ev.payload.status))
                st["duration_s"] = ev.payload.duration_s
    budget = [ev for ev in events if ev.kind is EventKind.BUDGET]
    proj = next((ev for ev in budget if ev.payload.decision == "projection"), None)
    end = next((ev for ev in events if ev.kind is EventKind.EXEC_COMPLETE), events[-1])
    per_stage_proj = dict((proj.payload.extra or {}).get("per_stage", {})) if proj else {}
    gaps = {g.stage: g for g in progress_gaps(events, limit_s=5.0)}
    per: dict[str, dict] = {}
    for name in STAGES:
        st = steps.get(name, {})
        row = {"status": st.get("status", "-"), "actual_s": st.get("duration_s"),
               "projected_s": per_stage_proj.get(name)}
        g = gaps.get(name)
        if g is not None:
            row.update(longest_gap_s=g.gap_s, gap_after=g.after, gap_before=g.before, gaps_over_5s=g.over,
                       progress_updates=g.updates)
        n_ev: dict[str, int] = {}
        for ev in events:
            if str(ev.stage) == name:
                n_ev[ev.kind.value] = n_ev.get(ev.kind.value, 0) + 1
        row["events"] = n_ev
        if samples is not None and "begin_ts" in st and "end_ts" in st:
            row["peak_rss_mib"] = samples.peak_mib(st["begin_ts"], st["end_ts"])
            row["load_1min"] = samples.load_range(st["begin_ts"], st["end_ts"])
            if name in PER_VOLUME:
                done_ts: dict[int, float] = {}
                total = 0
                for ev in events:
                    if ev.kind is EventKind.PROGRESS_UPDATE and str(ev.stage) == name:
                        total = max(total, int(ev.payload.file_total or 0))
                        done_ts.setdefault(int(ev.payload.file_done or 0), ev.ts)
                if total > 2 * EDGE and EDGE in done_ts and (total - EDGE) in done_ts:
                    row["volumes"] = total
                    row["peak_rss_first50_mib"] = samples.peak_mib(st["begin_ts"], done_ts[EDGE])
                    row["peak_rss_last50_mib"] = samples.peak_mib(done_ts[total - EDGE], st["end_ts"])
        per[name] = row
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").is_file() else {}
    warnings = [f"{ev.stage}: {ev.payload.message}" for ev in events if ev.kind is EventKind.WARNING]
    sub = out / "submission.zip"
    return {
        "run_s": end.ts - events[0].ts,
        "projection": None if proj is None else {
            "at_s": proj.t, "projected_s": proj.payload.projected_s, "message": proj.payload.message,
            "actual_rest_s": end.ts - proj.ts, "ratio": (end.ts - proj.ts) / proj.payload.projected_s},
        "budget_decisions": [{"decision": b.payload.decision, "at_s": round(b.t, 1), "message": b.payload.message}
                             for b in budget],
        "stages": per, "events": kinds, "warnings": warnings,
        "journal_head": ver.head,
        "verify_journal": {"ok": bool(ver.ok), "lines": ver.n_lines, "reason": ver.reason},
        "status": stats.get("status"), "validation_score": (stats.get("validation") or {}).get("mean_score"),
        "coverage": stats.get("coverage"), "counts": stats.get("counts"),
        "submission": {"exists": sub.is_file(), "bytes": sub.stat().st_size if sub.is_file() else 0},
    }


def console_silence(path: Path) -> dict:
    """The longest time between two consecutive lines of the launcher's console log."""
    ts = []
    for ln in path.read_text(errors="replace").splitlines():
        head = ln[2:] if ln.startswith("# ") else ln
        try:
            ts.append(float(head.split(" ", 1)[0]))
        except ValueError:
            continue
    if len(ts) < 2:
        return {"lines": len(ts), "longest_s": None}
    gaps = [(b - a, i) for i, (a, b) in enumerate(zip(ts, ts[1:]))]
    worst, i = max(gaps)
    return {"lines": len(ts), "longest_s": worst, "at_s": ts[i] - ts[0], "over_30s": sum(1 for g, _ in gaps if g > 30)}


def verify_cli(out: Path) -> tuple[int, str]:
    """``nx47 verify-journal`` on the run's journal: exit code and output."""
    r = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "verify-journal", str(out / "journal.jsonl")],
                       cwd=str(REPO), capture_output=True, text=True)
    return r.returncode, (r.stdout + r.stderr).strip()


def _cell(text: str, width: int = 60) -> str:
    text = str(text).replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(title: str, a: dict, data: dict | None, console: dict | None, verify: tuple[int, str],
             command: str, when: str, commit: str) -> list[str]:
    from _common import machine

    L = [f"## {title}", "", f"Command: `{command}`.", ""]
    if data:
        L += [f"**Dataset** (`nx47 demo-data`, see the command in README.md): {data['pairs']} training pairs "
              f"({', '.join(f'{k}: {v}' for k, v in data['shapes'].items())} over pairs and test volumes), "
              f"{data['test']} test volumes, {data['csv_rows']} train.csv rows over "
              f"{len(data['scrolls'])} scrolls ({', '.join(f'{k}: {v}' for k, v in data['scrolls'].items())}), "
              f"{data['deprecated']} deprecated pairs. **{data['distinct_volumes']} distinct volumes**; the other "
              f"{data['linked_files']} image files are hard links of one of the same split, shape and scroll "
              "(every id is read, computed and written in full: timing and memory are those of the full "
              "dataset; the statistics, and so the validation score, are those of the distinct volumes).", ""]
    cov = a.get("coverage") or {}
    counts = a.get("counts") or {}
    L += [f"Status **{a['status']}** after {a['run_s'] / 60:.1f} min; coverage "
          f"{cov.get('coverage_pct_selected_vs_discovered', '-')} % of "
          f"{cov.get('pair_count_discovered', '-')} pairs ({counts or '-'}); validation score "
          f"**{_fmt(a['validation_score'], '.3f')}**; `submission.zip` "
          f"{'present, ' + format(a['submission']['bytes'] / 2**20, '.1f') + ' MiB' if a['submission']['exists'] else 'MISSING'}.", ""]
    p = a["projection"]
    if p:
        L += [f"**First projection** (after the preflight, {p['at_s'] / 60:.1f} min in): "
              f"{p['projected_s'] / 60:.1f} min for the rest; actual rest {p['actual_rest_s'] / 60:.1f} min: "
              f"actual / projected = **{p['ratio']:.2f}** "
              f"({'within' if abs(p['ratio'] - 1) <= 0.2 else 'OUTSIDE'} ±20 %). It said: “{_cell(p['message'], 300)}”", ""]
    L += ["| stage | status | projected s | actual s | ratio | PROGRESS_UPDATE | longest gap s | gaps > 5 s "
          "| gap after | peak RSS MiB | first 50 / last 50 volumes, peak RSS MiB | 1-min load |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |"]
    for name, r in a["stages"].items():
        pr, ac = r.get("projected_s"), r.get("actual_s")
        ratio = ac / pr if pr and ac is not None and pr > 0.5 else None
        fl = (f"{_fmt(r.get('peak_rss_first50_mib'))} / {_fmt(r.get('peak_rss_last50_mib'))} "
              f"(of {r['volumes']})" if "volumes" in r else "")
        ld = r.get("load_1min")
        L.append(f"| {name} | {r['status']} | {_fmt(pr)} | {_fmt(ac)} | {_fmt(ratio, '.2f')} "
                 f"| {r.get('progress_updates', '-')} | **{_fmt(r.get('longest_gap_s'), '.2f')}** "
                 f"| {r.get('gaps_over_5s', '-')} | {_cell(r.get('gap_after', ''), 50)} "
                 f"| {_fmt(r.get('peak_rss_mib'))} | {fl} | {'-' if not ld else f'{ld[0]:.1f}–{ld[1]:.1f}'} |")
    worst = max(((r.get("longest_gap_s") or 0, n) for n, r in a["stages"].items()), default=(0, "-"))
    L += ["", f"Longest progress gap of the run: **{worst[0]:.2f} s** ({worst[1]}). Events: "
          + ", ".join(f"{k} {v}" for k, v in sorted(a["events"].items())) + "."]
    if console:
        L += ["", f"Console / notebook output: {console['lines']} lines, longest silence "
                  f"**{_fmt(console['longest_s'], '.1f')} s** ({console.get('over_30s', 0)} over 30 s)."]
    if a["warnings"]:
        L += ["", f"WARNING events ({len(a['warnings'])}): " + "; ".join(_cell(w, 160) for w in a["warnings"][:8])]
    L += ["", "BUDGET decisions: " + "; ".join(f"{b['decision']} at {b['at_s'] / 60:.1f} min: "
                                                f"“{_cell(b['message'], 160)}”" for b in a["budget_decisions"])]
    L += ["", f"Journal head `{a['journal_head']}`; `nx47 verify-journal` exit {verify[0]}: `{_cell(verify[1], 200)}`.",
          "", f"Machine: {machine()}; {when}; commit {commit}. The machine was otherwise quiet (nothing else "
          "started on it during the run; the 1-minute load per stage is in the table).", ""]
    return L


def report(args: argparse.Namespace) -> int:
    import datetime as _dt
    import shutil

    from _common import git_commit

    out = Path(args.out).resolve()
    spath = Path(str(out) + ".samples.tsv")
    samples = Samples(spath) if spath.is_file() else None
    a = analyse(out, samples)
    cpath = Path(str(out) + ".console.log")
    console = console_silence(cpath) if cpath.is_file() else None
    data = dataset_facts(Path(args.data)) if args.data else None
    verify = verify_cli(out)
    command = args.command or "nx47 run --max-train-volumes 0 --max-val-volumes 0 --budget-s 32400 --no-unet"
    t0 = _dt.datetime.fromtimestamp(samples.t[0], _dt.timezone.utc) if samples is not None and len(samples.t) else None
    when = (f"{t0:%Y-%m-%d %H:%M} UTC" if t0 else "time unknown")
    lines = markdown(args.title, a, data, console, verify, command, when, args.commit or git_commit())
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if args.append else "w"
        with open(args.md, mode, encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps({"dataset": data, "console": console, **a}, indent=1,
                                                 default=str) + "\n")
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("plan.json", "stats.json"):
            if (out / name).is_file():
                shutil.copy2(out / name, keep / name)
    return 0 if a["submission"]["exists"] and verify[0] == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--papermill", action="store_true")
    r.add_argument("--max-train", type=int, default=160)
    r.add_argument("--max-val", type=int, default=40)
    r.add_argument("--budget-s", type=float, default=32400)
    r.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="more nx47 run arguments, after the full-coverage ones (e.g. --extra --threads 1)")
    q = sub.add_parser("report")
    q.add_argument("--out", required=True, help="the run's folder")
    q.add_argument("--data", default=None, help="the dataset (for its distinct volumes and links)")
    q.add_argument("--md", default=None)
    q.add_argument("--append", action="store_true")
    q.add_argument("--summary", default=None, help="per-stage journal summary (JSON)")
    q.add_argument("--keep", default=None, help="folder for copies of plan.json and stats.json")
    q.add_argument("--title", default="The seed's run for real: 786 pairs at full coverage")
    q.add_argument("--command", default=None)
    q.add_argument("--commit", default=None, help="the run's commit (default: HEAD)")
    args = ap.parse_args()
    if args.cmd == "run":
        return run(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
