"""Helpers for the browser tests: the project's Voila server on 127.0.0.1 (the
command line of ``nx47 serve``, :func:`nx47_pipeline.cli.serve.voila_command`)
and Debian chromium driven by Playwright (never ``playwright install``: the
system browser is used)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import psutil

from nx47_pipeline.cli.serve import voila_command as serve_voila_command

from waits import wait_until

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
    """``nx47 serve``'s Voila command line, with tracebacks shown on the page."""
    return [*serve_voila_command(notebook, port=port), "--VoilaConfiguration.show_tracebacks=True"]


def kernel_pids(root_pid: int) -> list[int]:
    """Live ipykernel processes started under the process ``root_pid``."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in children:
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


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
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voila exited with {self.proc.returncode}: {self.log()}")
            try:  # the port accepts connections (any GET of "/" would start a kernel)
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    return True
            except OSError:
                return False

        try:
            wait_until(answers, timeout, f"voila to answer on {self.url}", interval_s=0.5)
        except AssertionError:
            raise TimeoutError(f"voila did not answer on {self.url} within {timeout} s: {self.log()}") from None

    def kernels(self) -> list[int]:
        """Pids of the live kernels of this server."""
        return kernel_pids(self.proc.pid)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to Voila (it shuts its kernels down); leftovers are killed."""
        kernels = self.kernels()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid in kernels:  # kernels live in their own sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


def wait_for(fn, pred, timeout_s, what, page=None, shots=None):
    """Poll ``fn()`` until ``pred(value)``; fail naming ``what`` and the last value."""
    box = {"value": None}

    def holds() -> bool:
        box["value"] = fn()
        return bool(pred(box["value"]))

    try:
        wait_until(holds, timeout_s, what, interval_s=0.2)
        return box["value"]
    except AssertionError:
        value = box["value"]
    if page is not None and shots is not None:
        page.screenshot(path=str(shots / f"timeout-{what.replace(' ', '_')}.png"), full_page=True)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last value {value!r}")


def artifacts_dir(name: str) -> Path:
    d = ARTIFACTS / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()
