"""``nx47 serve``: serve dashboard.ipynb with Voila on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nx47_pipeline.cli.run import ensure_data_root

NAME = "serve"
REPO_ROOT = Path(__file__).resolve().parents[2]


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(NAME, help="serve the dashboard with Voila on 127.0.0.1",
                       description="Generates the demo dataset if no data root is set, then serves dashboard.ipynb.")
    s.add_argument("--port", type=int, default=int(os.environ.get("NX47_PORT", "8866")))
    s.add_argument("--ip", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--data", default=None)
    s.add_argument("--out", default=None)


def voila_command(notebook: Path, *, port: int, ip: str = "127.0.0.1") -> list[str]:
    """The Voila command line the project uses (binds ``ip``, 127.0.0.1 by default)."""
    return [
        sys.executable, "-m", "voila", str(notebook),
        "--no-browser", f"--port={port}", f"--Voila.ip={ip}",
    ]


def main(args: argparse.Namespace) -> int:
    notebook = REPO_ROOT / "dashboard.ipynb"
    env = dict(os.environ)
    if args.data:
        env["NX47_DATA_ROOT"] = args.data
    if args.out:
        env["NX47_OUT_DIR"] = args.out
    if not env.get("NX47_DATA_ROOT"):
        # the Kaggle mounts, else the demo dataset (generated here when absent)
        env["NX47_DATA_ROOT"] = ensure_data_root("auto")
    cmd = voila_command(notebook, port=args.port, ip=args.ip)
    print(f"NX47 dashboard: http://{args.ip}:{args.port}/  (data root: {env.get('NX47_DATA_ROOT', 'auto')})", flush=True)
    return subprocess.call(cmd, env=env, cwd=str(REPO_ROOT))
