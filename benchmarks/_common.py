"""What every benchmark section states: the machine, the commit, the RAM.

Imported by the ``bench_*.py`` scripts (run as ``python benchmarks/bench_x.py``,
so this folder is on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short hash of HEAD, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ram_gib() -> float:
    """Total RAM in GiB (NaN when psutil is missing)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return float("nan")
    return psutil.virtual_memory().total / 2**30


def machine() -> str:
    """Processor, logical cores, RAM and Python version, in one line."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"{ram_gib():.1f} GiB RAM, Python {platform.python_version()}")


def write_section(out: Path, lines: list[str]) -> None:
    """Write a markdown section (``lines``) to ``out`` and echo it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def load_note() -> str:
    """One sentence stating how busy the machine was when the benchmark
    started (1-minute load average, read when this module was imported)."""
    return (f"1-minute load average {_LOAD_AT_START:.2f} on {os.cpu_count() or 1} cores when the "
            "benchmark started (a decaying average: within `benchmarks/run` it still counts the "
            "benchmark before; well above 1, times are upper bounds).")


_LOAD_AT_START = os.getloadavg()[0]
