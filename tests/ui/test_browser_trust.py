"""Run control a user can trust, in a real browser: ``nx47 serve`` (the CLI
itself, started in a working folder with a relative ``--out``) and Debian
chromium through Playwright.

* the address is printed once the server answers;
* the configured output folder is the page's Output; a run going on in
  another folder is offered for attach, never taken; Run creates the
  configured folder;
* bad output folders (``/proc/x``, ``/sys/x``, a file, a read-only folder)
  are refused before Run, naming the folder; a fixed problem clears the
  refusal; a refused budget reads refused; a missing data root is said once;
  discovery issues are listed; "not measured yet" without a preflight of
  this data; the disabled Stop looks disabled;
* (slow) a finished run's folder is byte-for-byte unchanged by opening,
  reloading, Run (which asks first), Cancel, and a run in another folder;
  only the confirmed Run changes it; a new run's viewer does not show the
  previous run's slice;
* (slow) Stop from a second tab during the preflight's U-Net timing ends the
  run within 2 s, measured in the page; both tabs say cancelled;
* SIGTERM to ``nx47 serve``: the open page shows a banner, marks what it
  shows as last known and disables Run and Stop with the reason.

One ``nx47 serve`` for the module (the SIGTERM test is last).  Screenshots
and the serve log go to ``test-artifacts/browser-trust/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from nx47_pipeline.cli.serve import answers
from nx47_pipeline.data.coverage import select_coverage
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.run.resume import pid_alive, read_lock_pid
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import EventKind, RunStartPayload
from nx47_pipeline.telemetry.journal import JournalSink

from browser_util import (CHROMIUM, CHROMIUM_ARGS, REPO, artifacts_dir, chromium_available, free_port,
                          wait_for)
from waits import wait_until  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available() and not os.environ.get("CI"),
                       reason=f"no chromium at {CHROMIUM}"),
]

TEXT_JS = "(sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; }"
VALUE_JS = "(sel) => { const e = document.querySelector(sel); return e ? e.value : null; }"
VISIBLE_JS = """(sel) => { const e = document.querySelector(sel);
  return !!(e && e.offsetParent !== null && getComputedStyle(e).display !== 'none'); }"""
ATTR_JS = """([sel, attr]) => { const e = document.querySelector(sel);
  return e ? e.getAttribute(attr) : null; }"""


def tree_hash(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def journal(folder: Path) -> list[dict]:
    path = folder / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Serve:
    """``nx47 serve --out runs/second`` started in ``work`` (a relative --out)."""

    def __init__(self, work: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nx47_pipeline.cli", "serve", "--port", str(self.port),
             "--out", "runs/second"],
            cwd=str(work), env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo data (with one discovery issue), runs/ and one ``nx47 serve``."""
    work = tmp_path_factory.mktemp("trust")
    data = work / "data"
    generate_demo_dataset(data, n_train=8, n_test=2, shape=48, seed=3)
    labels = sorted((data / "train_labels").glob("*.tif"))
    shutil.copy(labels[0], data / "train_labels" / "999999.tif")  # an orphan label: one issue
    (work / "runs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_"))}
    env.update({
        "NX47_DATA_ROOT": str(data),
        "NX47_STATE_DIR": str(work / "state"),
        "NX47_DETACHED": "0",
        "NX47_USE_UNET": "0",
        "NX47_HEARTBEAT_INTERVAL_S": "1",
        "NX47_SEARCH_MAX_ITER": "10",
        "NX47_FIT_MAX_ITER": "30",
        "NX47_MAX_TRAIN_VOLUMES": "3",
        "NX47_MAX_VAL_VOLUMES": "1",
        "NX47_BUDGET_S": "3600",
        "PYTHONPATH": str(REPO),
    })
    shots = artifacts_dir("browser-trust")
    serve = Serve(work, env, shots / "serve.log")
    # the address is printed once the server answers, not before
    def printed() -> bool:
        assert serve.proc.poll() is None, serve.log()
        return "NX47 dashboard: http" in serve.log()

    wait_until(printed, 150, "the address to be printed")
    answered = answers(serve.url, timeout=2.0)
    assert answered, "the address was printed before the server answered"
    assert "starting on" in serve.log().split("NX47 dashboard: http")[0]
    yield {"work": work, "data": data, "runs": work / "runs", "env": env, "serve": serve,
           "shots": shots}
    serve.stop()
    for folder in (work / "runs").iterdir():
        pid = read_lock_pid(folder)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(world):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url, shots=None, width=1300):
    page = browser.new_page(viewport={"width": width, "height": 1400})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".nx47-selected", timeout=180_000)
    page.nx47_requests = requests  # type: ignore[attr-defined]
    return page


def text(page, sel):
    return page.evaluate(TEXT_JS, sel) or ""


def type_into(page, sel, value):
    box = page.locator(f"{sel} input")
    box.fill(str(value))
    box.press("Enter")


def fake_live_run(folder: Path) -> subprocess.Popen:
    """A folder held by a live process, with a journal that started a run."""
    folder.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    bus = EventBus()
    bus.attach(JournalSink(folder / "journal.jsonl"))
    bus.publish(EventKind.RUN_START, RunStartPayload(run_id="live", out_dir=str(folder),
                                                     pid=proc.pid))
    bus.close()
    (folder / "run.lock").write_text(str(proc.pid))
    return proc


def ended_status(page) -> str:
    return page.evaluate(ATTR_JS, [".nx47-status[data-status]", "data-status"]) or ""


# ---------------------------------------------------------------------------
# item 1: the configured folder is the Output; a live run elsewhere is offered
# ---------------------------------------------------------------------------
@pytest.mark.timeout(400)
def test_configured_folder_is_the_output_and_a_live_run_elsewhere_is_only_offered(world, browser):
    runs, shots = world["runs"], world["shots"]
    second = runs / "second"
    live_dir = runs / "live"
    live = fake_live_run(live_dir)
    try:
        live_before = tree_hash(live_dir)
        page = open_page(browser, world["serve"].url)
        for attempt in ("load", "reload"):
            if attempt == "reload":
                page.reload(wait_until="domcontentloaded")
                page.wait_for_selector(".nx47-selected", timeout=180_000)
            # relative --out runs/second, made absolute against nx47 serve's folder
            assert page.evaluate(VALUE_JS, ".nx47-out-dir input") == str(second)
            wait_for(lambda: text(page, ".nx47-offer-text"), lambda v: "live" in v, 20,
                     "the offer of the live run", page, shots)
            assert page.evaluate(VISIBLE_JS, "button.nx47-offer")
            assert "attached" not in text(page, ".nx47-status-line")
            assert not second.exists()
        assert tree_hash(live_dir) == live_before, "the live run's folder was touched"
        page.screenshot(path=str(shots / "01-offer.png"), full_page=True)

        # Run: the configured folder is created and used
        page.locator("button.nx47-run").click()
        wait_for(lambda: [e["kind"] for e in journal(second)], lambda k: "RUN_START" in k, 60,
                 "a run in the configured folder", page, shots)
        assert tree_hash(live_dir) == live_before
        page.locator("button.nx47-stop").click()
        wait_for(lambda: ended_status(page), lambda v: v == "cancelled", 30,
                 "the run to end cancelled", page, shots)
        assert "run ended" in text(page, ".nx47-status-line")
        assert not list(live_dir.glob("stale-*")) and not list(second.glob("stale-*"))
        # the page's server watch asks its own server only
        watch = [u for u in page.nx47_requests if "/api/kernels/" in u and "/channels" not in u]
        assert watch and all(u.startswith(world["serve"].url) for u in watch), watch[:3]

        # the offer attaches when taken (and only then)
        page2 = open_page(browser, world["serve"].url)
        assert page2.evaluate(VALUE_JS, ".nx47-out-dir input") == str(second)
        page2.locator("button.nx47-offer").click()
        wait_for(lambda: text(page2, ".nx47-status-line"), lambda v: "attached" in v and "live" in v,
                 20, "the attach to the offered run", page2, shots)
        assert page2.evaluate(VALUE_JS, ".nx47-out-dir input") == str(live_dir)
        assert tree_hash(live_dir) == live_before
        page2.close()
        page.close()
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------
# items 5, 6, 12: refusals before Run, and words
# ---------------------------------------------------------------------------
@pytest.mark.timeout(400)
def test_bad_output_folders_are_refused_before_run_and_words_are_right(world, browser, tmp_path):
    runs, shots, data = world["runs"], world["shots"], world["data"]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    os.chmod(read_only, 0o555)
    good = runs / "good"
    page = open_page(browser, world["serve"].url + "?out=" + quote(str(good)))
    try:
        # the disabled Stop looks disabled
        stop = page.evaluate("""() => { const b = document.querySelector('button.nx47-stop');
            const s = getComputedStyle(b); return {disabled: b.disabled,
            opacity: parseFloat(s.opacity), filter: s.filter, cursor: s.cursor}; }""")
        assert stop["disabled"] and stop["opacity"] <= 0.5 and "grayscale" in stop["filter"], stop
        assert stop["cursor"] == "not-allowed"

        # no preflight of this data in the folder: nothing projected
        cov = text(page, ".nx47-coverage")
        assert "not measured yet" in text(page, ".nx47-projection") and "— fits" not in cov
        # the selected counts are the run's own selection
        sel = select_coverage(discover(data).pairs, max_train_volumes=3, max_val_volumes=1, seed=47)
        assert text(page, ".nx47-selected") == str(len(sel.train) + len(sel.val))
        assert f"({len(sel.train)} train + {len(sel.val)} val)" in cov
        # discovery issues are listed, expandable
        summary = page.locator(".nx47-issues summary")
        n_issues = len(discover(data).issues)
        assert n_issues >= 1 and f"{n_issues} discovery issue" in summary.text_content()
        items = page.locator(".nx47-issues li")
        assert items.count() == n_issues and not items.first.is_visible()
        summary.click()
        assert items.first.is_visible()
        assert "999999" in " ".join(items.all_text_contents())

        for bad in ("/proc/x", "/sys/x", str(a_file), str(read_only / "sub"), str(read_only)):
            type_into(page, ".nx47-out-dir", bad)
            wait_for(lambda: text(page, ".nx47-problems"), lambda v, b=bad: b in v, 15,
                     f"the problem naming {bad}", page, shots)
            page.locator("button.nx47-run").click()
            status = wait_for(lambda: text(page, ".nx47-status-line"),
                              lambda v, b=bad: "RunRefused" in v and b in v, 15,
                              f"Run refused for {bad}", page, shots)
            assert "not started" in status
            assert not Path(bad).exists() or bad in (str(a_file), str(read_only))
        page.screenshot(path=str(shots / "02-refused.png"), full_page=True)
        assert list(read_only.iterdir()) == []

        # a fixed problem clears the refusal
        type_into(page, ".nx47-out-dir", str(good))
        wait_for(lambda: text(page, ".nx47-status-line"), lambda v: "RunRefused" not in v, 15,
                 "the refusal to clear", page, shots)
        assert text(page, ".nx47-problems").strip() == ""

        # a refused budget reads refused, never "budget 6.0s"
        type_into(page, ".nx47-budget", 0)
        cov = wait_for(lambda: text(page, ".nx47-coverage"), lambda v: "refused" in v, 15,
                       "the budget refused in Coverage", page, shots)
        assert "6.0s" not in cov and "6s" not in cov
        type_into(page, ".nx47-budget", 60)
        wait_for(lambda: text(page, ".nx47-coverage"), lambda v: "refused" not in v, 15,
                 "the budget accepted again")

        # a missing data root is said once
        missing = str(tmp_path / "missing-root")
        type_into(page, ".nx47-data-root", missing)
        cov = wait_for(lambda: text(page, ".nx47-coverage"), lambda v: "missing-root" in v, 20,
                       "the missing data root", page, shots)
        assert cov.count(missing) == 1, cov
        assert text(page, ".nx47-problems").count(missing) == 1
        type_into(page, ".nx47-data-root", str(data))
        wait_for(lambda: text(page, ".nx47-problems").strip(), lambda v: v == "", 20,
                 "the data root accepted again", page, shots)
    finally:
        os.chmod(read_only, 0o755)
        page.close()


# ---------------------------------------------------------------------------
# must show: a finished run's folder is byte-for-byte unchanged (slow: a real run)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(world):
    """A finished run of the module's data in runs/done (``nx47 run``)."""
    done = world["runs"] / "done"
    proc = subprocess.run([sys.executable, "-m", "nx47_pipeline.cli", "run", "--data",
                           str(world["data"]), "--out", str(done)],
                          cwd=str(world["work"]), env=world["env"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_finished_run_folder_is_unchanged_by_everything_but_a_confirmed_run(world, browser,
                                                                               finished):
    runs, shots = world["runs"], world["shots"]
    done = finished
    before = tree_hash(done)
    assert "journal.jsonl" in before and "submission.zip" in before
    url_done = world["serve"].url + "?out=" + quote(str(done))

    # open the run, reload, open the configured page, open another run
    page = open_page(browser, url_done)
    wait_for(lambda: ended_status(page), lambda v: v not in ("", "running"), 60,
             "the finished run replayed", page, shots)
    assert "mean over 1 volume)" in text(page, ".nx47-results")
    cov = text(page, ".nx47-coverage")
    assert "— fits" in cov or "— does not fit" in cov, cov  # a preflight of this data: projected
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(".nx47-selected", timeout=180_000)
    wait_for(lambda: ended_status(page), lambda v: v not in ("", "running"), 60, "replayed again")
    other = open_page(browser, world["serve"].url)
    assert other.evaluate(VALUE_JS, ".nx47-out-dir input") == str(runs / "second")
    other.close()
    assert tree_hash(done) == before, "opening / reloading changed the finished run"

    # Run on it asks first; Cancel leaves it alone
    n_lines = len(journal(done))
    page.locator("button.nx47-run").click()
    wait_for(lambda: page.evaluate(VISIBLE_JS, ".nx47-confirm"), bool, 15,
             "the confirmation question", page, shots)
    assert str(done) in text(page, ".nx47-confirm")
    assert "not started" in text(page, ".nx47-status-line")
    page.screenshot(path=str(shots / "03-confirm.png"), full_page=True)
    page.locator("button.nx47-confirm-cancel").click()
    wait_for(lambda: page.evaluate(VISIBLE_JS, ".nx47-confirm"), lambda v: not v, 15,
             "the question to go")
    assert len(journal(done)) == n_lines and tree_hash(done) == before

    # a run in another folder from the page that showed the finished run
    third = runs / "third"
    type_into(page, ".nx47-out-dir", str(third))
    page.locator("button.nx47-run").click()
    wait_for(lambda: text(page, ".nx47-preview"), lambda v: "waiting for this run's first slice" in v,
             10, "the viewer to drop the finished run's slice", page, shots)
    assert not page.evaluate(VISIBLE_JS, "img.nx47-preview-image, .nx47-preview-image img")
    wait_for(lambda: [e["kind"] for e in journal(third)], lambda k: "RUN_START" in k, 60,
             "the run in the other folder")
    page.locator("button.nx47-stop").click()
    wait_for(lambda: ended_status(page), lambda v: v == "cancelled", 30, "the other run to stop",
             page, shots)
    assert tree_hash(done) == before, "a run elsewhere changed the finished run"
    assert not list(done.glob("stale-*"))

    # the explicit, confirmed action is the only one that changes it
    type_into(page, ".nx47-out-dir", str(done))
    page.locator("button.nx47-run").click()
    wait_for(lambda: page.evaluate(VISIBLE_JS, ".nx47-confirm"), bool, 15, "the question again")
    assert tree_hash(done) == before
    page.locator("button.nx47-confirm-run").click()
    wait_for(lambda: sum(e["kind"] == "RUN_START" for e in journal(done)), lambda n: n == 2, 60,
             "the confirmed run", page, shots)
    page.locator("button.nx47-stop").click()
    wait_for(lambda: ended_status(page), lambda v: v == "cancelled", 30, "the confirmed run to stop")
    page.close()


# ---------------------------------------------------------------------------
# item 2: Stop within 2 s during the preflight's U-Net timing, from another tab
# ---------------------------------------------------------------------------
STOP_CLOCK_JS = """() => {
  window.__nx47Stop = {pressed: null, ended: null};
  const b = document.querySelector('button.nx47-stop');
  b.addEventListener('click', () => { window.__nx47Stop.pressed = performance.now(); }, true);
  const status = document.querySelector('.nx47-status-line');
  new MutationObserver(() => {
    if (window.__nx47Stop.pressed !== null && window.__nx47Stop.ended === null
        && /run ended/.test(status.textContent)) window.__nx47Stop.ended = performance.now();
  }).observe(status, {subtree: true, childList: true, characterData: true});
}"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stop_from_a_second_tab_in_the_preflight_unet_timing_ends_within_2s(world, browser):
    pytest.importorskip("torch")
    runs, shots = world["runs"], world["shots"]
    folder = runs / "stop-unet"
    url = world["serve"].url + "?out=" + quote(str(folder))
    owner = open_page(browser, url)
    owner.locator(".nx47-unet select").select_option("on")
    assert not owner.locator(".nx47-detached input").is_checked()
    owner.locator("button.nx47-run").click()
    in_unet_timing = re.compile(r"Stage\s*preflight.*Sub-step\s*unet")
    wait_for(lambda: text(owner, ".nx47-progress"), lambda v: bool(in_unet_timing.search(v)),
             400, "the preflight's U-Net timing", owner, shots)
    kernel = read_lock_pid(folder)

    second = open_page(browser, url)  # a second tab on the same run
    wait_for(lambda: text(second, ".nx47-status-line"), lambda v: "attached" in v, 60,
             "the second tab to attach", second, shots)
    # the run is threaded: the second tab says so
    assert not second.locator(".nx47-detached input").is_checked()
    assert "threaded run" in text(second, ".nx47-status-line")
    assert in_unet_timing.search(text(second, ".nx47-progress"))
    second.evaluate(STOP_CLOCK_JS)
    t_click = time.time()
    second.locator("button.nx47-stop").click()
    clock = wait_for(lambda: second.evaluate("() => window.__nx47Stop"),
                     lambda v: v and v["ended"] is not None, 30, "the second tab to show the end",
                     second, shots)
    took = (clock["ended"] - clock["pressed"]) / 1000.0
    second.screenshot(path=str(shots / "04-stopped-second-tab.png"), full_page=True)
    wait_for(lambda: [e["kind"] for e in journal(folder)], lambda k: "EXEC_COMPLETE" in k, 30,
             "the run's end in its journal")
    after = {e["kind"]: round(e["ts"] - t_click, 3) for e in journal(folder)
             if e["kind"] in ("CANCELLED", "EXEC_COMPLETE") and e["ts"] >= t_click - 1}
    (shots / "stop-unet-seconds.txt").write_text(
        f"press to the page's end: {took:.3f} s\njournal, seconds after the press: {after}\n")
    assert took <= 2.0, f"Stop took {took:.2f} s from press to the page's end"
    assert ended_status(second) == "cancelled"
    events = journal(folder)
    assert events[-1]["kind"] == "EXEC_COMPLETE" and events[-1]["payload"]["status"] == "cancelled"
    assert pid_alive(kernel), "Stop must cancel the run, not kill its kernel"
    assert not (folder / "killed.json").exists()

    # the owner's tab: the real status words, not "running — running" with ACTIVE
    status = wait_for(lambda: text(owner, ".nx47-status-line"), lambda v: "run ended" in v, 15,
                      "the owner tab to show the end", owner, shots)
    assert "running — running" not in status and "cancelled" in status.lower()
    assert owner.evaluate(ATTR_JS, [".nx47-hb", "data-state"]) == "CANCELLED"
    owner.close()
    second.close()


# ---------------------------------------------------------------------------
# item 3: the server gone is visible (last: it stops the module's server)
# ---------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_sigterm_to_serve_shows_a_banner_and_disables_run_and_stop(world, browser):
    shots, serve = world["shots"], world["serve"]
    page = open_page(browser, serve.url)
    wait_for(lambda: page.evaluate("() => !!window.__nx47Watch"), bool, 30, "the watcher to run")
    assert page.locator(".nx47-gone-banner").count() == 0
    t0 = time.monotonic()
    os.kill(serve.proc.pid, signal.SIGTERM)  # the serve process only, as a service manager does
    banner = wait_for(lambda: text(page, ".nx47-gone-banner"), lambda v: "gone" in v, 45,
                      "the banner", page, shots)
    took = time.monotonic() - t0
    page.screenshot(path=str(shots / "05-server-gone.png"), full_page=True)
    assert ("server gone" in banner or "kernel gone" in banner) and "last known" in banner
    assert took < 45
    for sel in ("button.nx47-run", "button.nx47-stop", "button.nx47-attach"):
        b = page.evaluate("""(sel) => { const b = document.querySelector(sel);
            return {disabled: b.disabled, title: b.title}; }""", sel)
        assert b["disabled"] and "gone" in b["title"], (sel, b)
    marks = page.locator(".nx47-last-known")
    assert marks.count() >= 2 and "last known" in marks.first.text_content()
    serve.proc.wait(45)
    page.close()
