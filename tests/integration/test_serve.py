"""The README's main command, ``scripts/serve``: it generates the demo dataset
when absent and serves the dashboard with Voila on 127.0.0.1 at the address it
prints; a real HTTP request gets the rendered dashboard page."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from browser_util import free_port
from waits import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_serve_prints_its_address_and_serves_the_dashboard(tmp_path):
    demo = tmp_path / "demo data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NX47_")}
    env.update(NX47_DEMO_ROOT=str(demo), NX47_OUT_DIR=str(tmp_path / "runs"), NX47_AUTO_RUN="0")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([str(REPO / "scripts" / "serve"), "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def printed() -> str | None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            m = re.search(r"NX47 dashboard: (http://\S+)", (tmp_path / "serve.log").read_text())
            return m.group(1) if m else None

        url = wait_until(printed, 240, "the dashboard's address", interval_s=0.2)
        assert url == f"http://127.0.0.1:{port}/", (tmp_path / "serve.log").read_text()
        # the demo dataset was generated because none existed
        assert (demo / "train.csv").is_file() and any((demo / "test_images").glob("*.tif"))
        def page() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    assert resp.status == 200
                    return resp.read().decode("utf-8", "replace")
            except OSError:
                return None

        body = wait_until(page, 240, f"the page at {url}", interval_s=0.5)
        assert "NX47" in body and "live run dashboard" in body
        assert "application/vnd.jupyter.widget-view+json" in body  # the widgets rendered
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
