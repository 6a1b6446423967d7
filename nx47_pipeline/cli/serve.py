"""``nx47 serve``: serve dashboard.ipynb with Voila on 127.0.0.1.

Voila runs as ``python -m nx47_widgets.server`` (Voila with the dashboard's
page life cycle: a closed or reloaded page leaves no kernel behind, a kernel
running a threaded run is kept until the run ends; see ``docs/dashboard.md``).
SIGTERM, SIGINT and SIGHUP sent to ``nx47 serve`` are passed on to Voila,
which shuts its kernels down before it exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

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


#: Seconds a kernel may stay without a connected page before it is shut down,
#: and how often that is checked (``nx47_widgets.server.DashboardKernelManager``).
ORPHAN_KERNEL_S = 8
CULL_INTERVAL_S = 4

#: Signals passed on to Voila.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: Seconds Voila gets to shut its kernels down after a forwarded signal.
STOP_WAIT_S = 30.0


def voila_command(notebook: Path, *, port: int, ip: str = "127.0.0.1") -> list[str]:
    """The Voila command line the project uses (binds ``ip``, 127.0.0.1 by default).

    Voila runs through ``nx47_widgets.server`` (the page life cycle); kernels
    without a connected page are shut down after :data:`ORPHAN_KERNEL_S` s.
    """
    return [
        sys.executable, "-m", "nx47_widgets.server", str(notebook),
        "--no-browser", f"--port={port}", f"--Voila.ip={ip}",
        f"--MappingKernelManager.cull_idle_timeout={ORPHAN_KERNEL_S}",
        f"--MappingKernelManager.cull_interval={CULL_INTERVAL_S}",
    ]


#: A kernel id no kernel has: asking the server about it starts nothing.
_PROBE_PATH = "/api/kernels/00000000-0000-0000-0000-000000000000"


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when the server at ``url`` answers an HTTP request (any status).

    It asks about a kernel that does not exist, which starts no kernel
    (a GET of the page itself would).
    """
    try:
        with urllib.request.urlopen(url.rstrip("/") + _PROBE_PATH, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # 404 (or 403): the server answered
    except (OSError, ValueError):
        return False


def run_forwarding_signals(cmd: list[str], *, env: dict[str, str], cwd: str,
                           ready: Callable[[], bool] | None = None,
                           on_ready: Callable[[], None] | None = None) -> int:
    """Run ``cmd`` and pass SIGTERM / SIGINT / SIGHUP on to it; its exit status.

    A second signal, or Voila still running :data:`STOP_WAIT_S` s after the
    first, kills it.  ``on_ready()`` is called once, when ``ready()`` first
    says the server answers (polled about every 0.25 s until then).
    """
    proc = subprocess.Popen(cmd, env=env, cwd=cwd)
    received: list[int] = []

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if len(received) > 1 else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    stop_by = None
    waiting = ready is not None and on_ready is not None
    try:
        while True:
            try:
                return proc.wait(timeout=0.25 if waiting else 0.5)
            except subprocess.TimeoutExpired:
                pass
            if waiting and not received and ready():
                waiting = False
                on_ready()
            if received and stop_by is None:
                stop_by = time.monotonic() + STOP_WAIT_S
            if stop_by is not None and time.monotonic() > stop_by:
                proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(args: argparse.Namespace) -> int:
    notebook = REPO_ROOT / "dashboard.ipynb"
    env = dict(os.environ)
    # Voila runs in the repository: relative folders are the caller's, made absolute here
    if args.data:
        env["NX47_DATA_ROOT"] = _absolute(args.data)
    if args.out:
        env["NX47_OUT_DIR"] = _absolute(args.out)
    if not env.get("NX47_DATA_ROOT"):
        # the Kaggle mounts, else the demo dataset (generated here when absent)
        env["NX47_DATA_ROOT"] = ensure_data_root("auto")
    cmd = voila_command(notebook, port=args.port, ip=args.ip)
    url = f"http://{args.ip}:{args.port}/"
    print(f"NX47 dashboard: starting on {url} …", flush=True)

    def announce() -> None:
        print(f"NX47 dashboard: {url}  (data root: {env.get('NX47_DATA_ROOT', 'auto')}; "
              f"output folder: {env.get('NX47_OUT_DIR', 'runs/latest')})", flush=True)

    return run_forwarding_signals(cmd, env=env, cwd=str(REPO_ROOT),
                                  ready=lambda: answers(url), on_ready=announce)


def _absolute(path: str) -> str:
    """``path`` made absolute against the current folder (``auto``/``demo`` kept)."""
    if path.strip().lower() in ("auto", "demo"):
        return path
    return str(Path(path).expanduser().absolute())
