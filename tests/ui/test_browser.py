"""The dashboard as a user sees it: ``voila dashboard.ipynb`` on 127.0.0.1,
driven by Debian chromium through Playwright.

Moves a coverage slider and sees the coverage panel change, clicks Run (in
detached mode), sees the global bar advance, the heartbeat light change and a
preview image appear, reloads the page (Voila kills the kernel) and sees the
re-attached dashboard continue, and waits for the run to finish.  Screenshots
and the Voila log go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

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
)
from waits import wait_until  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    # in CI a missing browser is a failure, not a skip
    pytest.mark.skipif(not chromium_available() and not os.environ.get("CI"),
                       reason=f"no chromium at {CHROMIUM}"),
]

GLOBAL_WIDTH_JS = """() => {
  const bar = document.querySelector('.nx47-bar-global .progress-bar');
  return bar ? parseFloat(bar.style.width || '0') : -1;
}"""
HB_STATE_JS = """() => {
  const hb = document.querySelector('.nx47-hb');
  return hb ? hb.getAttribute('data-state') : null;
}"""
PREVIEW_JS = """() => {
  const c = document.querySelector('canvas.nx47-qa-canvas');
  if (!c || !c.getClientRects().length || !document.querySelector('.nx47-camera')) return 0;
  const px = c.getContext('2d').getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
  return px[3] === 255 ? c.getBoundingClientRect().width : 0;  // the slice is drawn
}"""
TEXT_JS = """(sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; }"""
RESULT_JS = """() => {
  const e = document.querySelector('.nx47-status[data-status]');
  return e ? e.getAttribute('data-status') : null;
}"""


def _frames(page) -> None:
    """Until the browser has drawn two more frames (images and canvases just set are on screen)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _wait(page, js, pred, timeout_s, what, arg=None, shots=None):
    box = {"value": None}

    def holds() -> bool:
        box["value"] = page.evaluate(js, arg) if arg is not None else page.evaluate(js)
        return bool(pred(box["value"]))

    try:
        return wait_until(holds, timeout_s, what, interval_s=0.25) and box["value"]
    except AssertionError:
        value = box["value"]
    if shots is not None:
        page.screenshot(path=str(shots / f"timeout-{what.replace(' ', '_')}.png"), full_page=True)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last value {value!r}")


@pytest.fixture()
def run_env(tmp_path):
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=8, n_test=2, shape=48, seed=3)
    out = tmp_path / "out"
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("VOILA_", "JPY_", "NX47_"))]:
        del env[k]
    env.update({
        "NX47_DATA_ROOT": str(data),
        "NX47_OUT_DIR": str(out),
        "NX47_DETACHED": "1",
        "NX47_USE_UNET": "0",
        "NX47_HEARTBEAT_INTERVAL_S": "1",
        "NX47_SEARCH_MAX_ITER": "40",
        "NX47_FIT_MAX_ITER": "150",
        "NX47_MAX_TRAIN_VOLUMES": "5",
        "NX47_MAX_VAL_VOLUMES": "2",
        "PYTHONPATH": str(REPO),
    })
    yield env, data, out
    pid = read_lock_pid(out)  # the detached run started through the page
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)


@pytest.mark.timeout(420)
def test_voila_dashboard_in_chromium(run_env):
    from playwright.sync_api import sync_playwright

    env, data, out = run_env
    shots = artifacts_dir("browser")
    server = VoilaServer(REPO / "dashboard.ipynb", env, shots / "voila.log")
    try:
        server.wait_ready(120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1800})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            try:
                _drive(page, server.url, shots, out)
            finally:
                (shots / "console.log").write_text("\n".join(console))
                page.screenshot(path=str(shots / "99-last.png"), full_page=True)
                browser.close()
    finally:
        server.stop()


def _drive(page, url: str, shots: Path, out: Path) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".nx47-dashboard", timeout=180_000)
    page.wait_for_selector(".nx47-selected", timeout=60_000)
    page.screenshot(path=str(shots / "01-loaded.png"), full_page=True)

    # -- the coverage panel follows the slider at once --------------------
    before = page.evaluate(TEXT_JS, ".nx47-selected")
    assert before == "7", f"5 train + 2 val of 8 discovered expected, panel says {before!r}"
    handle = page.locator(".nx47-max-train .noUi-handle")
    handle.focus()
    for _ in range(3):
        handle.press("ArrowLeft")
    selected = _wait(page, TEXT_JS, lambda v: v == "4", 30, "coverage panel update",
                     arg=".nx47-selected", shots=shots)
    assert selected == "4"
    assert page.evaluate(TEXT_JS, ".nx47-coverage-pct") == "50.0%"
    page.screenshot(path=str(shots / "02-slider-moved.png"), full_page=True)
    for _ in range(3):
        handle.press("ArrowRight")
    _wait(page, TEXT_JS, lambda v: v == "7", 30, "slider back", arg=".nx47-selected")

    # -- Run (detached) -----------------------------------------------------
    assert page.locator(".nx47-detached input").is_checked()
    assert page.evaluate(HB_STATE_JS) == "WAITING"
    page.locator("button.nx47-run").click()
    _wait(page, HB_STATE_JS, lambda v: v in ("ACTIVE", "COMPUTING"), 90,
          "heartbeat light to turn on", shots=shots)
    w1 = _wait(page, GLOBAL_WIDTH_JS, lambda v: v > 0, 90, "global bar to advance", shots=shots)
    page.screenshot(path=str(shots / "03-running.png"), full_page=True)
    docs = shots / "docs"
    docs.mkdir(exist_ok=True)
    # the kernel stays responsive during the run: a slider still updates the panel
    val_handle = page.locator(".nx47-max-val .noUi-handle")
    val_handle.focus()
    val_handle.press("ArrowLeft")
    _wait(page, TEXT_JS, lambda v: v == "6", 30, "coverage panel during the run",
          arg=".nx47-selected", shots=shots)
    width = _wait(page, PREVIEW_JS, lambda v: v > 0, 120, "the slice drawn on the QA canvas", shots=shots)
    assert width >= 300
    page.screenshot(path=str(shots / "04-preview.png"), full_page=True)
    w2 = page.evaluate(GLOBAL_WIDTH_JS)
    assert pid_alive(read_lock_pid(out)), "the detached run should still be running"

    # -- reload: Voila kills the kernel, the run goes on, the page re-attaches --
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(".nx47-dashboard", timeout=180_000)
    status = _wait(page, TEXT_JS, lambda v: v and "attached" in v, 60, "re-attach",
                   arg=".nx47-status-line", shots=shots)
    assert str(out) in status
    w3 = _wait(page, GLOBAL_WIDTH_JS, lambda v: v >= max(w1, w2), 60,
               "global bar after reload", shots=shots)
    page.screenshot(path=str(shots / "05-reattached.png"), full_page=True)
    # the ETA comes from the projection (or the run already finished)
    _wait(page, TEXT_JS, lambda v: v and (("ETA" in v and "(projection)" in v) or "finished" in v),
          90, "an ETA from the projection", arg=".nx47-bartext-global", shots=shots)
    page.screenshot(path=str(shots / "docs" / "live-run.png"), full_page=False)

    # -- completion -----------------------------------------------------------
    result = _wait(page, RESULT_JS, lambda v: v in ("ok", "failed", "cancelled"), 300,
                   "run completion", shots=shots)
    page.screenshot(path=str(shots / "06-finished.png"), full_page=True)
    assert result == "ok", page.evaluate(TEXT_JS, ".nx47-results")
    assert page.evaluate(GLOBAL_WIDTH_JS) == pytest.approx(100.0)
    assert _wait(page, HB_STATE_JS, lambda v: v == "FINISHED", 30, "FINISHED light") == "FINISHED"
    assert "journal verified" in page.evaluate(TEXT_JS, ".nx47-results")
    assert (out / "submission.zip").is_file()
    (shots / "progress.json").write_text(json.dumps({"w1": w1, "w2": w2, "w3": w3}))
    page.locator(".nx47-results-card").screenshot(path=str(shots / "docs" / "results-card.png"))
    assert "validation score" in page.evaluate(TEXT_JS, ".nx47-results")
    _qa_viewer(page, shots, out)


SLICE_JS = """() => { const e = document.querySelector('.nx47-preview-info');
  const m = e ? e.textContent.match(/[zyx]=(\\d+)/) : null; return m ? parseInt(m[1]) : null; }"""


def _qa_viewer(page, shots: Path, out: Path) -> None:
    """The QA viewer after the run: worst first, keys, side by side, a mark in qa.json,
    the runs page showing it."""
    page.locator(".nx47-worst-first input").check()
    page.locator(".nx47-preview select").first.select_option(index=0)  # the worst volume
    _wait(page, TEXT_JS, lambda v: v and v.startswith("val"), 30, "the worst validation volume",
          arg=".nx47-preview-vol", shots=shots)
    page.locator(".nx47-view-mode button", has_text="side by side").click()
    before = _wait(page, SLICE_JS, lambda v: v is not None, 30, "a slice shown", shots=shots)
    page.locator(".nx47-dashboard h2").click()  # focus outside any text box
    page.keyboard.press("ArrowRight")  # keyboard shortcut: next slice
    _wait(page, SLICE_JS, lambda v: v == before + 1, 30, "the next slice by key", shots=shots)
    _wait(page, TEXT_JS, lambda v: v and "false positives" in v, 30, "per-slice error counts",
          arg=".nx47-slice-counts", shots=shots)
    page.locator("button.nx47-qa-fail").click()
    wait_until((out / "qa.json").exists, 30, "qa.json", interval_s=0.2)
    marks = json.loads((out / "qa.json").read_text())["volumes"]
    assert [m["mark"] for m in marks.values()] == ["fail"]
    _topo_of_real_run(page, shots, out)
    _frames(page)  # the side-by-side panels
    page.locator(".nx47-preview").screenshot(path=str(shots / "docs" / "qa-viewer.png"))
    page.locator(".nx47-runs-page button", has_text="Refresh").click()
    _wait(page, TEXT_JS, lambda v: v and "1 fail" in v, 30, "the mark on the runs page",
          arg=".nx47-runs", shots=shots)
    page.locator(".nx47-runs-page").screenshot(path=str(shots / "docs" / "runs-page.png"))



TOPO_JS = """() => {
  const t = document.querySelector('.nx47-topo');
  if (!t) return null;
  const box = t.closest('.nx47-topo-box');
  const rows = [...t.querySelectorAll('tr[data-dim]')].map(r => [...r.querySelectorAll('td')]
      .map(c => c.textContent.trim()));
  const wrap = t.querySelector('.nx47-topo-wrap');
  const r = t.getBoundingClientRect();
  return {volume: t.getAttribute('data-volume'), recorded: t.getAttribute('data-recorded'),
          visible: !!box && getComputedStyle(box).display !== 'none' && r.height > 0,
          text: t.textContent, rows: rows,
          overflow: wrap ? wrap.scrollWidth > wrap.clientWidth + 1 : false,
          hScroll: document.scrollingElement.scrollWidth > window.innerWidth + 1};
}"""


def _topo_of_real_run(page, shots: Path, out: Path) -> None:
    """The selected validation volume's TopoScore table agrees with its record on disk."""
    vid = page.evaluate(TEXT_JS, ".nx47-preview-vol").split()[-1]
    topo = _wait(page, TOPO_JS, lambda v: v and v["volume"] == vid and v["visible"], 30,
                 "the TopoScore table of the selected volume", shots=shots)
    rec = json.loads((out / "val" / f"{vid}.json").read_text())
    if all(k in rec for k in ("topo_matched", "betti_pred", "betti_gt", "topo_f1")):
        assert topo["recorded"] == "1", topo
        for k, cells in enumerate(topo["rows"]):
            m, p, g = rec["topo_matched"][k], rec["betti_pred"][k], rec["betti_gt"][k]
            assert cells[1:6] == [str(m), str(p), str(g), str(p - m), str(g - m)], (k, cells, rec)
            assert cells[6] == ("—" if rec["topo_f1"][k] is None else f"{rec['topo_f1'][k]:.3f}")
        assert f"topo {rec['topo']:.3f}" in topo["text"]
    else:  # a record of an older run: says so
        assert topo["recorded"] == "0" and "not recorded" in topo["text"], topo
    assert not topo["overflow"] and not topo["hScroll"], topo


@pytest.mark.timeout(240)
def test_topo_table_in_chromium(tmp_path):
    """A finished run folder with known per-volume TopoScore parts: the QA
    viewer's table shows the selected volume's numbers, follows the Volume
    list to another volume, and says "not recorded" for an older record;
    no overflow at 1300 or 800 px.  Screenshots in test-artifacts/browser/topo/."""
    from playwright.sync_api import sync_playwright

    from topo_runs import make_topo_run, records

    data, out, (a, b, c) = make_topo_run(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_"))}
    env.update(NX47_DATA_ROOT=str(data), NX47_OUT_DIR=str(out),
               NX47_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(REPO))
    shots = artifacts_dir("browser/topo")
    server = VoilaServer(REPO / "dashboard.ipynb", env, shots / "voila.log")
    try:
        server.wait_ready(120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1400})
            try:
                page.goto(server.url, wait_until="domcontentloaded")
                page.wait_for_selector(".nx47-dashboard", timeout=180_000)
                select = page.locator(".nx47-preview select").first
                label = {v: f"val/{v} · {r['score']:.3f}" for v, r in zip((a, b, c), records())}
                _wait(page, TEXT_JS, lambda v: v and "attached" in v, 90, "the run opened",
                      arg=".nx47-status-line", shots=shots)
                select.select_option(label[a])
                topo = _wait(page, TOPO_JS, lambda v: v and v["volume"] == a and v["visible"], 30,
                             "volume A's TopoScore table", shots=shots)
                assert topo["recorded"] == "1", topo
                assert topo["rows"] == [
                    ["0 components", "3", "5", "4", "2", "1", "0.667", "0.51", "0.169"],
                    ["1 tunnels", "1", "2", "3", "1", "2", "0.400", "0.49", "0.296"],
                    ["2 cavities", "0", "0", "0", "0", "0", "—", "—", "—"]], topo
                assert "method: betti matching (exact)" in topo["text"]
                assert "most topology is lost in dimension 1 (tunnels)" in topo["text"]
                assert not topo["overflow"] and not topo["hScroll"], topo
                # the undefined F1 explains itself on hover
                tip = page.locator(".nx47-topo td.nx47-topo-undefined").get_attribute("title")
                assert "in either the prediction or the label" in tip
                _frames(page)  # the slice's PNG
                page.locator(".nx47-preview").screenshot(path=str(shots / "qa-viewer-topo.png"))
                page.locator(".nx47-topo").screenshot(path=str(shots / "topo-table.png"))

                select.select_option(label[b])
                topo = _wait(page, TOPO_JS, lambda v: v and v["volume"] == b, 30,
                             "volume B's TopoScore table", shots=shots)
                assert topo["rows"][2] == ["2 cavities", "1", "1", "2", "0", "1", "0.667", "0.33", "0.110"]
                page.locator(".nx47-topo").screenshot(path=str(shots / "topo-table-b.png"))

                select.select_option(label[c])
                topo = _wait(page, TOPO_JS, lambda v: v and v["volume"] == c, 30,
                             "volume C's text", shots=shots)
                assert topo["recorded"] == "0" and "not recorded" in topo["text"] and not topo["rows"]
                page.locator(".nx47-topo").screenshot(path=str(shots / "topo-not-recorded.png"))
                page.locator(".nx47-results-card").screenshot(path=str(shots / "results-card-topo.png"))

                page.set_viewport_size({"width": 800, "height": 1400})
                select.select_option(label[a])
                topo = _wait(page, TOPO_JS, lambda v: v and v["volume"] == a, 30, "A at 800 px", shots=shots)
                assert not topo["overflow"] and not topo["hScroll"], topo
                _frames(page)
                page.locator(".nx47-preview").screenshot(path=str(shots / "qa-viewer-topo-800.png"))
            finally:
                page.screenshot(path=str(shots / "99-last.png"), full_page=True)
                browser.close()
    finally:
        server.stop()


PAGE_JS = """() => {
  const vis = (e) => !!e && getComputedStyle(e).display !== 'none' && e.getClientRects().length > 0;
  const unet = document.querySelector('.nx47-unet select');
  const img = document.querySelector('img.nx47-preview-image, .nx47-preview-image img');
  const titles = [...document.querySelectorAll('h1, h2')].filter(vis)
      .filter(e => e.textContent.includes('NX47')).length;
  const left = document.querySelector('.nx47-left').getBoundingClientRect();
  const right = document.querySelector('.nx47-right').getBoundingClientRect();
  const log = document.querySelector('.nx47-log-view');
  return {
    title: document.title,
    unet: unet && unet.selectedIndex >= 0 ? unet.options[unet.selectedIndex].text.replace(/\u00a0/g, ' ') : '',
    brokenImage: !!img && vis(img) && !(img.naturalWidth > 0),
    markdownVisible: [...document.querySelectorAll('.jp-MarkdownCell')].some(vis),
    titles: titles,
    capsHint: (document.querySelector('.nx47-caps-hint') || {}).textContent || '',
    legend: vis(document.querySelector('.nx47-legend')),
    sideBySide: right.left >= left.right - 1 && right.top < left.bottom,
    stacked: right.top >= left.bottom - 1,
    hScroll: document.scrollingElement.scrollWidth > window.innerWidth + 1,
    logAtBottom: log ? Math.abs(log.scrollTop) < 2 : null,
  };
}"""


@pytest.mark.timeout(240)
def test_page_loads_clean_and_uses_the_width(tmp_path):
    """Bug 5 and the layout: the tab names NX47, one title, no intro markdown, the
    U-Net choice shows, no broken-image icon, "0 = all" explained, the overlay legend;
    two columns at 1600 px, one at 800 px, no sideways scrolling."""
    from playwright.sync_api import sync_playwright

    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=6, n_test=1, shape=32, seed=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_"))}
    env.update(NX47_DATA_ROOT=str(data), NX47_OUT_DIR=str(tmp_path / "out"),
               NX47_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(REPO))
    shots = artifacts_dir("browser-page")
    server = VoilaServer(REPO / "dashboard.ipynb", env, shots / "voila.log")
    try:
        server.wait_ready(120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
            for width in (1600, 800):
                page = browser.new_page(viewport={"width": width, "height": 1000})
                page.goto(server.url, wait_until="domcontentloaded")
                page.wait_for_selector(".nx47-selected", timeout=180_000)
                _frames(page)  # the last widget views are drawn
                info = page.evaluate(PAGE_JS)
                page.screenshot(path=str(shots / f"page-{width}.png"), full_page=True)
                assert info["title"].startswith("NX47"), info
                assert info["titles"] == 1 and not info["markdownVisible"], info
                assert info["unet"] == "auto (GPU only)", info
                assert not info["brokenImage"], info
                assert "0 = all" in info["capsHint"] and info["legend"], info
                assert not info["hScroll"], info
                assert info["logAtBottom"] in (True, None), info
                if width == 1600:
                    assert info["sideBySide"], info
                else:
                    assert info["stacked"], info
                page.close()
            browser.close()
    finally:
        server.stop()
