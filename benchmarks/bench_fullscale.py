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
               *FULL_ARGS]
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
    args = ap.parse_args()
    if args.cmd == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
