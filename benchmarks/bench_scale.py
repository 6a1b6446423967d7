"""Scale benchmark at 320^3: projected against actual, per stage, at three coverages.

Each coverage is the real ``nx47 run --no-unet`` in a subprocess on a 320^3
dataset in the competition layout (``nx47 demo-data --shape 320``, written
once into ``--data``).  The parent samples the run's resident memory (with
children) every 100 ms for the peak, and reads the run's journal: the first
BUDGET ``projection`` (its ``extra.per_stage``) against the STEP ``end``
durations of the stages after the preflight.  Then ``nx47 plan`` projects
the competition's full coverage (629 train / 157 val / 120 test) from that
run's own 320^3 preflight.

Run: ``python benchmarks/bench_scale.py --out benchmarks/results/scale.md
[--data DIR] [--quick]`` (``--quick``: 96^3, for a smoke test of the script).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from _common import git_commit, load_note, machine, write_section  # noqa: E402

STAGES = ("features", "search", "fit_prox", "validate", "segment", "package")
#: (train, val) coverages; test volumes are all of the dataset's.
COVERAGES = ((4, 2), (8, 3), (12, 4))


def journal(out: Path) -> list[dict]:
    events = []
    for line in (out / "journal.jsonl").read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def run_one(data: Path, out: Path, n_train: int, n_val: int, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NX47_")}
    env.update(NX47_HEARTBEAT_INTERVAL_S="5", NX47_CONSOLE_INTERVAL_S="30")
    cmd = [sys.executable, "-m", "nx47_pipeline.cli", "run", "--data", str(data), "--out", str(out),
           "--no-unet", "--max-train-volumes", str(n_train), "--max-val-volumes", str(n_val),
           "--budget-s", "20000", "--quiet", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"run {n_train}/{n_val} failed ({proc.returncode}): {err[-2000:]}")
    events = journal(out)
    proj = next(e for e in events if e["kind"] == "BUDGET" and e["payload"]["decision"] == "projection")
    per_stage = proj["payload"]["extra"]["per_stage"]
    actual = {e["stage"]: e["payload"]["duration_s"] for e in events
              if e["kind"] == "STEP" and e["payload"]["phase"] == "end" and e["payload"]["status"] == "ok"}
    t_proj = proj["ts"]
    t_end = next(e for e in events if e["kind"] == "EXEC_COMPLETE")["ts"]
    stats = json.loads((out / "stats.json").read_text())
    return {"n_train": n_train, "n_val": n_val, "wall": wall, "peak_mb": peak / 2**20,
            "projected": {s: per_stage.get(s, 0.0) for s in STAGES},
            "actual": {s: actual.get(s, 0.0) for s in STAGES},
            "projected_rest": sum(per_stage.get(s, 0.0) for s in STAGES),
            "actual_rest": t_end - t_proj,
            "preflight_s": actual.get("preflight", 0.0),
            "score": stats["validation"]["mean_score"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.md")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (generated there when absent)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    shape = 96 if args.quick else 320
    tmp = Path(tempfile.mkdtemp(prefix="nx47-scale-"))
    data = args.data or tmp / "data"
    n_pairs = max(t + v for t, v in COVERAGES)
    if not (data / "train.csv").exists():
        subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "demo-data", "--out", str(data),
                        "--n-train", str(n_pairs), "--n-test", "4", "--shape", str(shape), "--seed", "47"],
                       check=True, cwd=str(REPO))
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [run_one(data, tmp / f"run-{t}-{v}", t, v) for t, v in COVERAGES]
    t, v = COVERAGES[-1]
    before = run_one(data, tmp / "run-before", t, v, "--set", "sample_slabs=0", "--set", "search_max_val_volumes=0",
                     "--set", "search_top_k=0")
    plan = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "plan", "--out", str(tmp / "run-12-4"),
                           "--n-train", "629", "--n-val", "157", "--n-test", "120", "--budget-s", "7200"],
                          capture_output=True, text=True, cwd=str(REPO)).stdout.strip()
    lines = [f"## Scale at {shape}³: projection against actual, per stage", "",
             f"`nx47 run --no-unet` (default settings otherwise) on a {shape}³ dataset of {n_pairs} pairs and "
             "4 test volumes; the first BUDGET `projection` (made after the preflight) against the STEP "
             "durations that followed. Ratio = actual / projected. Peak RSS = the run's process tree, "
             "sampled every 100 ms. Command: `python benchmarks/bench_scale.py --out "
             "benchmarks/results/scale.md`.", "",
             "| coverage (train/val/test) | preflight s | projected rest s | actual rest s | ratio | peak RSS MiB | val score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['n_train']}/{r['n_val']}/4 | {r['preflight_s']:.0f} | {r['projected_rest']:.0f} | "
                     f"{r['actual_rest']:.0f} | {r['actual_rest'] / max(r['projected_rest'], 1e-9):.2f} | "
                     f"{r['peak_mb']:.0f} | {r['score']:.3f} |")
    lines += ["", "Per stage, seconds projected → actual (ratio):", "",
              "| coverage | " + " | ".join(STAGES) + " |", "| --- |" + " ---: |" * len(STAGES)]
    for r in rows:
        cells = [f"{r['projected'][s]:.0f} → {r['actual'][s]:.0f} ({r['actual'][s] / r['projected'][s]:.2f})"
                 if r["projected"][s] > 0 else f"— → {r['actual'][s]:.0f}" for s in STAGES]
        lines.append(f"| {r['n_train']}/{r['n_val']} | " + " | ".join(cells) + " |")
    lines += ["", f"Validation quality on the same data ({t}/{v}): training samples from 3 z-slabs per volume "
              f"(`sample_slabs=3`, the default) {rows[-1]['score']:.3f} in {rows[-1]['wall']:.0f} s; from every "
              f"slab and every search candidate scored in full (`sample_slabs=0`, `search_max_val_volumes=0`, "
              f"`search_top_k=0`: the previous behaviour) "
              f"{before['score']:.3f} in {before['wall']:.0f} s (features {before['actual']['features']:.0f} s "
              f"against {rows[-1]['actual']['features']:.0f} s; search {before['actual']['search']:.0f} s against "
              f"{rows[-1]['actual']['search']:.0f} s).", ""]
    lines += ["", "`nx47 plan --n-train 629 --n-val 157 --n-test 120 --budget-s 7200` from the 12/4 run's "
              f"{shape}³ preflight:", "", "```", plan, "```", "",
              f"Machine: {machine()}. Date: {started}. Commit: {git_commit()}. {load_note()}", ""]
    write_section(args.out, lines)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
