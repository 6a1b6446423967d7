"""The scripts the page runs under Voila parse as JavaScript (node --check),
and the server watch asks only the page's own server."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nx47_widgets.views.page import PageBridge
from nx47_widgets.views.runs import SORT_SCRIPT


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_scripts_are_valid_javascript(tmp_path):
    bridge = PageBridge(enabled=True)
    bridge.bind_keys()
    bridge.watch_server()
    bridge.keep_run_in_url("/tmp/run's folder")
    bridge.set_title("NX47 — run")
    bridge.watch_sizes(lambda sizes: None)
    bridge.run(SORT_SCRIPT, keep=True)
    assert len(bridge.scripts) >= 6
    for i, script in enumerate(bridge.scripts):
        path = tmp_path / f"script{i}.js"
        path.write_text(script)
        done = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_server_watch_asks_its_own_server_about_its_own_kernel():
    bridge = PageBridge(enabled=True)
    bridge.watch_server(interval_s=1.5)
    script = bridge.scripts[-1]
    assert "jupyter-config-data" in script and "api/kernels/" in script
    assert "http" not in script  # a relative address: the page's own server
    assert "1500" in script  # every 1.5 s
    assert "'server'" in script and "'kernel'" in script
