"""Helpers for the browser test: a Voila server on 127.0.0.1 and Debian chromium
driven by Playwright (never ``playwright install``: the system browser is used)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("NX47_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voila_command(notebook: Path, port: int) -> list[str]:
    voila = Path(sys.executable).with_name("voila")
    exe = [str(voila)] if voila.exists() else [sys.executable, "-m", "voila"]
    return [*exe, str(notebook), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
            "--VoilaConfiguration.show_tracebacks=True"]


class VoilaServer:
    """``voila dashboard.ipynb`` on a free port, its log in ``log_path``."""

    def __init__(self, notebook: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(voila_command(notebook, self.port), cwd=str(REPO),
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voila exited with {self.proc.returncode}: {self.log()}")
            try:  # the port accepts connections (any GET of "/" would start a kernel)
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"voila did not answer on {self.url} within {timeout} s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # voila and the kernels it started
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def artifacts_dir(name: str) -> Path:
    d = ARTIFACTS / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()
