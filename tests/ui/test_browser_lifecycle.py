"""The page's life cycle in a real browser: the project's Voila server (the
command line of ``nx47 serve``) and Debian chromium through Playwright.

* closed and reloaded pages leave no kernel behind, an open page keeps its own;
* a threaded run survives the reload of its page, the new page re-attaches,
  and Stop there ends it CANCELLED (lock released, folder reusable);
* a detached run in a folder other than the default is re-attached after a
  reload (the folder is in the address) and keeps moving; a busy folder
  offers Attach instead of Run;
* SIGTERM to ``nx47 serve`` ends Voila and its kernels.

Screenshots and the Voila log go to ``test-artifacts/browser-lifecycle/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.run.resume import pid_alive, read_lock_pid

from browser_util import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    VoilaServer,
    artifacts_dir,
    chromium_available,
    free_port,
    kernel_pids,
    wait_for,
)
from waits import wait_until  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available() and not os.environ.get("CI"),
                       reason=f"no chromium at {CHROMIUM}"),
]

TEXT_JS = """(sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; }"""
ATTR_JS = """([sel, attr]) => { const e = document.querySelector(sel);
  return e ? e.getAttribute(attr) : null; }"""
GLOBAL_JS = """() => { const b = document.querySelector('.nx47-bar-global .progress-bar');
  return b ? parseFloat(b.style.width || '0') : -1; }"""
VALUE_JS = """(sel) => { const e = document.querySelector(sel); return e ? e.value : null; }"""
BUTTON_JS = """(sel) => { const b = document.querySelector(sel);
  return b ? {text: b.textContent.trim(), disabled: b.disabled} : null; }"""


def js(page, script, arg=None):
    return page.evaluate(script, arg) if arg is not None else page.evaluate(script)


@pytest.fixture()
def served(tmp_path):
    """Demo data, a long-running configuration, and the project's Voila server."""
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=8, n_test=2, shape=48, seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_"))}
    env.update({
        "NX47_DATA_ROOT": str(data),
        "NX47_OUT_DIR": str(tmp_path / "default-out"),
        "NX47_STATE_DIR": str(tmp_path / "state"),
        "NX47_USE_UNET": "0",
        "NX47_HEARTBEAT_INTERVAL_S": "1",
        "NX47_SEARCH_MAX_ITER": "40",
        # a final fit that runs for minutes: the runs below are stopped, not waited for
        "NX47_FIT_MAX_ITER": "100000",
        "NX47_FIT_TOL": "0",
        "NX47_MAX_TRAIN_VOLUMES": "5",
        "NX47_MAX_VAL_VOLUMES": "2",
        "PYTHONPATH": str(REPO),
    })
    yield env, tmp_path
    for folder in tmp_path.iterdir():  # any run still going
        pid = read_lock_pid(folder)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _server(env, tmp_path, shots, **extra_env):
    server = VoilaServer(REPO / "dashboard.ipynb", {**env, **extra_env}, shots / "voila.log")
    server.wait_ready(120)
    return server


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def _open(page, url, shots=None):
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".nx47-selected", timeout=180_000)


def _journal(folder: Path) -> list[dict]:
    path = folder / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_closed_and_reloaded_pages_leave_no_kernel(served):
    from playwright.sync_api import sync_playwright

    env, tmp = served
    shots = artifacts_dir("browser-lifecycle-kernels")
    server = _server(env, tmp, shots)
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            keep = browser.new_page(viewport={"width": 1280, "height": 900})
            _open(keep, server.url)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for i in range(7):  # 7 page loads: the first, then 6 reloads
                if i == 0:
                    _open(page, server.url)
                else:
                    page.reload(wait_until="domcontentloaded")
                    page.wait_for_selector(".nx47-selected", timeout=180_000)
            assert page.title().startswith("NX47"), page.title()
            page.close()  # closed without its unload request: the server must notice
            t_closed = time.monotonic()
            kernels = wait_for(server.kernels, lambda k: len(k) <= 1, 25,
                               "kernels of closed pages to be shut down")
            assert len(kernels) == 1, "the page still open must keep its kernel"
            assert time.monotonic() - t_closed <= 25
            # the open page still works: its slider updates the coverage panel
            before = js(keep, TEXT_JS, ".nx47-selected")
            handle = keep.locator(".nx47-max-train .noUi-handle")
            handle.focus()
            handle.press("ArrowLeft")
            wait_for(lambda: js(keep, TEXT_JS, ".nx47-selected"), lambda v: v != before, 20,
                     "the open page to answer", keep, shots)
            keep.screenshot(path=str(shots / "open-page.png"), full_page=True)
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(420)
def test_threaded_run_survives_reload_and_stop_after_reattach_cancels_cleanly(served):
    from playwright.sync_api import sync_playwright

    env, tmp = served
    out = tmp / "default-out"
    shots = artifacts_dir("browser-lifecycle-threaded")
    server = _server(env, tmp, shots, NX47_DETACHED="0")
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            _open(page, server.url)
            assert not page.locator(".nx47-detached input").is_checked()
            page.locator("button.nx47-run").click()
            wait_for(lambda: js(page, GLOBAL_JS), lambda v: v > 0, 90, "the threaded run to start",
                     page, shots)
            kernel_a = read_lock_pid(out)
            assert kernel_a in server.kernels(), "the threaded run runs in the page's kernel"

            # reload: the kernel running the run is kept, the new page re-attaches
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector(".nx47-dashboard", timeout=180_000)
            status = wait_for(lambda: js(page, TEXT_JS, ".nx47-status-line"),
                              lambda v: v and "attached" in v and "threaded run" in v, 60,
                              "the re-attach", page, shots)
            assert str(out) in status
            assert pid_alive(kernel_a) and read_lock_pid(out) == kernel_a
            w = wait_for(lambda: js(page, GLOBAL_JS), lambda v: v > 0, 30, "progress after reload")
            page.screenshot(path=str(shots / "reattached.png"), full_page=True)

            # Stop on the re-attached page: a clean CANCELLED, not a killed kernel
            page.locator("button.nx47-stop").click()
            result = wait_for(lambda: js(page, ATTR_JS, [".nx47-status", "data-status"]),
                              lambda v: v not in (None, "running"), 30, "the run to end", page, shots)
            page.screenshot(path=str(shots / "stopped.png"), full_page=True)
            assert result == "cancelled", js(page, TEXT_JS, ".nx47-results")
            events = _journal(out)
            ends = [e for e in events if e["kind"] == "EXEC_COMPLETE"]
            assert ends and ends[-1]["payload"]["status"] == "cancelled"
            assert any(e["kind"] == "CANCELLED" for e in events)
            assert not (out / "run.lock").exists(), "a stale run.lock was left"
            assert pid_alive(kernel_a), "Stop must cancel the run, not kill its kernel"
            assert js(page, ATTR_JS, [".nx47-hb", "data-state"]) == "CANCELLED"
            assert w >= 0

            # the folder is reusable: Run asks first (it holds an ended run), then
            # starts a new run there
            run = js(page, BUTTON_JS, "button.nx47-run")
            assert run == {"text": "Run", "disabled": False}, run
            n_starts = sum(e["kind"] == "RUN_START" for e in events)
            page.locator("button.nx47-run").click()
            page.locator("button.nx47-confirm-run").click()
            wait_for(lambda: sum(e["kind"] == "RUN_START" for e in _journal(out)),
                     lambda n: n == n_starts + 1, 60, "a second run in the same folder", page, shots)
            page.locator("button.nx47-stop").click()
            wait_for(lambda: js(page, ATTR_JS, [".nx47-status", "data-status"]),
                     lambda v: v == "cancelled", 30, "the second run to stop", page, shots)
            # the kernel that ran the first run had no page and no run left: shut down
            wait_for(lambda: pid_alive(kernel_a), lambda alive: not alive, 30,
                     "the old kernel to be shut down once its run ended")
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(420)
def test_detached_run_in_another_folder_is_reattached_after_reload(served):
    from playwright.sync_api import sync_playwright

    env, tmp = served
    elsewhere = tmp / "elsewhere" / "run 1"
    shots = artifacts_dir("browser-lifecycle-detached")
    server = _server(env, tmp, shots, NX47_DETACHED="1", NX47_PROGRESS_INTERVAL_S="0.1")
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            _open(page, server.url)
            box = page.locator(".nx47-out-dir input")
            box.fill(str(elsewhere))
            box.press("Enter")
            page.locator("button.nx47-run").click()
            wait_for(lambda: read_lock_pid(elsewhere), pid_alive, 60, "the detached run to start",
                     page, shots)
            # the run folder is in the address (a reload opens it)
            wait_for(lambda: page.evaluate("window.location.search"),
                     lambda q: "out=" in q and "elsewhere" in q, 20, "the folder in the address",
                     page, shots)
            w1 = wait_for(lambda: js(page, GLOBAL_JS), lambda v: v > 0, 90, "progress", page, shots)

            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector(".nx47-dashboard", timeout=180_000)
            status = wait_for(lambda: js(page, TEXT_JS, ".nx47-status-line"),
                              lambda v: v and "attached" in v and "running" in v, 60,
                              "the re-attach", page, shots)
            assert str(elsewhere) in status
            assert js(page, VALUE_JS, ".nx47-out-dir input") == str(elsewhere)
            w2 = wait_for(lambda: js(page, GLOBAL_JS), lambda v: v >= w1, 60, "progress after reload")
            # and it keeps moving
            # the global figure moves slowly once a long stage is planned (its
            # weight is large), so "moving" is any progress bar or counter text
            def progress_now():
                return (js(page, GLOBAL_JS),) + tuple(js(page, TEXT_JS, f".nx47-bartext-{name}")
                                                      for name in ("stage", "substep", "file"))

            seen = progress_now()
            wait_for(progress_now, lambda v: v != seen and v[0] >= w2, 120, "progress to move on",
                     page, shots)
            page.screenshot(path=str(shots / "reattached.png"), full_page=True)

            # a page on another run's address (a page without one would open the
            # running run by itself), then pointed at the busy folder: Attach, not Run
            other = browser.new_page(viewport={"width": 1280, "height": 1000})
            _open(other, server.url + "?out=" + quote(str(tmp / "idle")))
            assert js(other, TEXT_JS, ".nx47-status-line") in ("", None) or \
                "attached" not in js(other, TEXT_JS, ".nx47-status-line")
            box = other.locator(".nx47-out-dir input")
            box.fill(str(elsewhere))
            box.press("Enter")
            run = wait_for(lambda: js(other, BUTTON_JS, "button.nx47-run"),
                           lambda b: b and b["disabled"], 20, "Run to be refused", other, shots)
            assert "busy" in run["text"]
            attach = js(other, BUTTON_JS, "button.nx47-attach")
            assert attach["text"] == "Attach to the running run" and not attach["disabled"]
            assert "busy" in js(other, TEXT_JS, ".nx47-problems")
            other.screenshot(path=str(shots / "busy-folder.png"), full_page=True)
            other.locator("button.nx47-attach").click()
            wait_for(lambda: js(other, TEXT_JS, ".nx47-status-line"),
                     lambda v: v and "attached" in v and "running" in v, 60, "attach", other, shots)
            wait_for(lambda: other.evaluate("window.location.search"), lambda q: "elsewhere" in q,
                     20, "the attached folder in the address", other, shots)
            other.close()

            page.locator("button.nx47-stop").click()
            wait_for(lambda: js(page, ATTR_JS, [".nx47-status", "data-status"]),
                     lambda v: v == "cancelled", 60, "the run to stop", page, shots)
            assert not (elsewhere / "run.lock").exists()
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_sigterm_to_nx47_serve_ends_voila_and_its_kernels(served, tmp_path):
    from playwright.sync_api import sync_playwright

    env, tmp = served
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "nx47_pipeline.cli", "serve", "--port", str(port)],
                             cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        def listens() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listens, 120, "nx47 serve to listen", interval_s=0.3)
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page()
            _open(page, f"http://127.0.0.1:{port}/")
            procs = psutil.Process(serve.pid).children(recursive=True)
            kernels = kernel_pids(serve.pid)
            assert kernels, "the page has a kernel"
            os.kill(serve.pid, signal.SIGTERM)  # the serve process only, as a service manager does
            serve.wait(45)
            browser.close()
        gone, alive = psutil.wait_procs(procs, timeout=15)
        assert not alive, f"left running after SIGTERM to nx47 serve: {[p.pid for p in alive]}"
        assert all(not pid_alive(k) for k in kernels)
    finally:
        log.close()
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for p in psutil.Process().children(recursive=True):
            if "ipykernel" in " ".join(p.cmdline()) or "voila" in " ".join(p.cmdline()):
                p.kill()
