"""What the page shows, measured in Debian chromium through ``nx47 serve``'s
Voila (one server for the module): the QA canvas (fills its column, wheel
zoom around the cursor, drag pan, double-click reset, crisp pixels, side by
side panels of at least 300 px with titles), the run header in the first
viewport, the runs table inside its column (one-line dates and statuses,
links that look like links, a running row's elapsed time, sortable columns,
no blank control), the charts drawn at their displayed size × device pixel
ratio, and a page that asks nothing of any host but 127.0.0.1 and logs no
version warning.  The pictures of docs/dashboard.md are taken here
(``test-artifacts/browser-view/docs/``, copied to ``docs/img/``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import pytest

from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.volumes import read_volume, write_volume
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import (
    BudgetDecision,
    BudgetPayload,
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    MetricPayload,
    PreviewPayload,
    ProgressPayload,
    RunStartPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink

from browser_util import CHROMIUM, CHROMIUM_ARGS, REPO, VoilaServer, artifacts_dir, chromium_available
from waits import wait_until  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available() and not os.environ.get("CI"),
                       reason=f"no chromium at {CHROMIUM}"),
]

#: Seconds the "live" run has been running when the page opens (at least).
LIVE_AGE_S = 42.0
#: The finished run's figures.
DONE_DURATION_S, DONE_SCORES = 125.0, {"a": 0.61, "b": 0.47}


def _publish(out: Path, events, clock=time.time) -> None:
    bus = EventBus(clock=clock)
    bus.attach(JournalSink(out / "journal.jsonl"))
    for kind, payload, stage in events:
        bus.publish(kind, payload, stage=stage)
    bus.close()


def _finished_run(out: Path, data: Path) -> list[str]:
    """A run that ended with one of two test volumes on the fallback: two
    validation volumes (image, label, prediction), one fit_prox point."""
    pairs = discover(data).pairs[:2]
    ids = [p.id for p in pairs]
    events = [(EventKind.RUN_START, RunStartPayload(run_id="done", out_dir=str(out), pid=1), "")]
    for pair, score in zip(pairs, DONE_SCORES.values()):
        lab = read_volume(pair.label_path, kind="label")
        pred = np.roll(lab == 1, 2, axis=2).astype(np.uint8)  # a prediction a little off
        write_volume(out / "val" / f"{pair.id}.tif", pred)
        events.append((EventKind.PREVIEW, PreviewPayload(
            volume_id=pair.id, split="val", shape=list(lab.shape), image_path=str(pair.image_path),
            label_path=str(pair.label_path), pred_path=f"val/{pair.id}.tif", score=score), "validate"))
    events.append((EventKind.METRIC, MetricPayload(name="fit_prox_objective", value=1.0, step=0), "fit_prox"))
    per_volume = {i: {"score": s} for i, s in zip(ids, DONE_SCORES.values())}
    stats = {"status": "ok", "validation": {"mean_score": float(np.mean(list(DONE_SCORES.values()))),
                                            "per_volume": per_volume},
             "counts": {"train": 3, "val": 2, "test": 2, "fallback_volumes": 1},
             "coverage": {"coverage_pct_selected_vs_discovered": 100.0}}
    events += [(EventKind.GLOBAL_STATS, GlobalStatsPayload(stats=stats), ""),
               (EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=DONE_DURATION_S), "")]
    _publish(out, events)
    write_json(out / "stats.json", stats)
    return ids


def _live_run(out: Path, pid: int) -> None:
    """A run started LIVE_AGE_S ago, held by the live process ``pid``, with a projection."""
    t0 = time.time() - LIVE_AGE_S
    ticks = iter([t0, t0 + 1, t0 + 2, t0 + 3, t0 + 4])
    _publish(out, [
        (EventKind.RUN_START, RunStartPayload(run_id="live", out_dir=str(out), pid=pid), ""),
        (EventKind.BUDGET, BudgetPayload(decision=BudgetDecision.PROJECTION, message="projection",
                                         projected_s=600.0, budget_s=3600.0, fits=True,
                                         extra={"per_stage": {"search": 200.0, "fit_prox": 400.0}}), "budget"),
        (EventKind.PROGRESS_UPDATE, ProgressPayload(step="search", step_index=1, step_count=6, step_done=1,
                                                    step_total=4, substep="", substep_done=0, substep_total=0,
                                                    file="", file_done=0, file_total=0, global_=0.1), "search"),
    ], clock=lambda: next(ticks))
    (out / "run.lock").write_text(str(pid))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("view")
    data = base / "data"
    generate_demo_dataset(data, n_train=3, n_test=2, shape=96, seed=5)
    runs = base / "runs"
    done, live = runs / "2026-12-finished-run-with-a-long-name", runs / "live-run"
    ids = _finished_run(done, data)
    holder = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])  # lives until killed
    _live_run(live, holder.pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOILA_", "JPY_", "NX47_"))}
    env.update(NX47_DATA_ROOT=str(data), NX47_OUT_DIR=str(done), NX47_STATE_DIR=str(base / "state"),
               PYTHONPATH=str(REPO))
    shots = artifacts_dir("browser-view")
    (shots / "docs").mkdir()
    server = VoilaServer(REPO / "dashboard.ipynb", env, shots / "voila.log")
    try:
        server.wait_ready(120)
        yield {"server": server, "done": done, "live": live, "ids": ids, "shots": shots}
    finally:
        server.stop()
        holder.send_signal(signal.SIGTERM)
        holder.wait(10)


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Page:
    """A page of the site with what it asked for and what it logged."""

    def __init__(self, chromium, site, folder: Path, width: int, height: int = 1000, dpr: float = 1.0):
        self.context = chromium.new_context(viewport={"width": width, "height": height},
                                            device_scale_factor=dpr)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.goto(site["server"].url + f"?out={quote(str(folder))}", wait_until="domcontentloaded")
        self.page.wait_for_selector(".nx47-hd[data-state]", timeout=180_000)

    def wait(self, js: str, what: str, timeout_s: float = 60.0, arg=None):
        return wait_until(lambda: self.page.evaluate(js, arg), timeout_s, what, interval_s=0.1)

    def frames(self) -> None:
        """Until the browser has drawn two more frames (a canvas redrawn after a change)."""
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def page_at(chromium, site):
    opened: list[Page] = []

    def open_(folder: Path, width: int, height: int = 1000, dpr: float = 1.0) -> Page:
        p = Page(chromium, site, folder, width, height, dpr)
        opened.append(p)
        return p

    yield open_
    for p in opened:
        p.close()


# -- item 11: offline, quiet console ---------------------------------------------
def test_the_page_asks_only_127_0_0_1_and_logs_no_version_warning(site, page_at):
    p = page_at(site["done"], 1600)
    p.wait("() => document.querySelectorAll('canvas.nx47-qa-canvas').length > 0 && "
           "!!document.querySelector('img.nx47-charts-image, .nx47-charts-image img')", "the page")
    # every font the page uses has loaded or failed: a font from a CDN would have been asked for by now
    assert p.page.evaluate("() => document.fonts.ready.then(() => document.fonts.status)") == "loaded"
    hosts = {urlparse(u).hostname for u in p.requests if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts <= {"127.0.0.1", "localhost"}, sorted(hosts)
    assert len(p.requests) > 10  # the page's own files were requested (the listener works)
    errors = [t for kind, t in p.console if kind == "error"]
    versions = [t for kind, t in p.console if kind in ("warning", "error") and "version" in t.lower()]
    assert errors == [] and versions == [], p.console


# -- item 8: the run header ------------------------------------------------------
HEADER_JS = """() => {
  const hd = document.querySelector('.nx47-hd'); const r = hd.getBoundingClientRect();
  const bars = [...document.querySelectorAll('.nx47-header .nx47-bar-row')].map(e => e.getBoundingClientRect());
  const g = document.querySelector('.nx47-header .nx47-bar-global').getBoundingClientRect();
  const d = hd.dataset;
  return {top: r.top, bottom: r.bottom, width: r.width, height: r.height, vw: window.innerWidth,
          vh: window.innerHeight, state: d.state, elapsed: d.elapsed, eta: d.eta, score: d.score,
          fallback: d.fallback, text: hd.textContent, bars: bars.map(b => [b.top, b.bottom, b.width]),
          globalWidth: g.width};
}"""


def test_the_header_shows_state_elapsed_eta_score_and_fallbacks_in_the_first_viewport(site, page_at):
    p = page_at(site["done"], 1600)
    h = p.wait("(" + HEADER_JS + ")().elapsed ? (" + HEADER_JS + ")() : null", "the finished run's header")
    assert 0 <= h["top"] and h["bottom"] <= 1000 and h["height"] < 80, h  # one strip, at the top
    assert h["state"] == "fallback segmentation", h
    assert float(h["elapsed"]) == DONE_DURATION_S and float(h["eta"]) == 0.0
    assert float(h["score"]) == pytest.approx(np.mean(list(DONE_SCORES.values())), abs=1e-3)
    assert h["fallback"] == "1"
    for words in ("elapsed", "2m05s", "ETA", "validation", "0.5400", "fallback", "1 of 2"):
        assert words in h["text"], (words, h["text"])
    # the four progress bars under it, full width, all inside the first viewport
    assert len(h["bars"]) == 4 and all(top >= h["bottom"] - 1 and bottom <= 1000 for top, bottom, _ in h["bars"])
    assert all(w >= 0.95 * h["width"] for _, _, w in h["bars"]) and h["globalWidth"] > 0.62 * h["width"], h
    p.page.screenshot(path=str(site["shots"] / "header-finished.png"))

    live = page_at(site["live"], 1600)
    h = live.wait("(() => { const d = document.querySelector('.nx47-hd').dataset; "
                  "return d.state === 'running' && d.eta ? {...d} : null; })()", "the running run's header")
    assert float(h["elapsed"]) >= LIVE_AGE_S and float(h["eta"]) > 0, h
    assert h["score"] == "" and h["fallback"] == "", h  # not known yet: said as "-"


# -- item 9: the runs table --------------------------------------------------------
RUNS_JS = """() => {
  const box = document.querySelector('.nx47-runs'); const col = document.querySelector('.nx47-left');
  const t = box.querySelector('table'); const cr = col.getBoundingClientRect();
  const lines = (el) => { const r = document.createRange(); r.selectNodeContents(el);
    return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; };
  const rows = [...t.tBodies[0].rows].map(tr => ({
    outcome: tr.dataset.outcome,
    status: lines(tr.cells[2]), started: lines(tr.cells[3]),
    took: tr.querySelector('.nx47-took').textContent, tookV: tr.querySelector('.nx47-took').dataset.v,
    score: tr.cells[5].dataset.v}));
  const a = t.querySelector('a.nx47-run-link'); const cs = getComputedStyle(a);
  const td = getComputedStyle(t.querySelector('td'));
  const sel = document.querySelector('.nx47-run-choice select');
  const lastTh = [...t.querySelectorAll('th')].pop().getBoundingClientRect();
  return {scrollWidth: box.scrollWidth, clientWidth: box.clientWidth, colRight: cr.right,
          tableRight: t.getBoundingClientRect().right, lastThRight: lastTh.right, rows: rows,
          linkColour: cs.color, textColour: td.color, underline: cs.textDecorationLine,
          choice: sel ? sel.value : null, choiceIndex: sel ? sel.selectedIndex : -1};
}"""


def test_the_runs_table_fits_its_column_and_sorts(site, page_at):
    for width in (1600, 800):
        p = page_at(site["done"], width)
        r = p.wait("(() => { const t = document.querySelector('.nx47-runs table'); "
                   "return t && t.tBodies[0].rows.length === 2 ? (" + RUNS_JS + ")() : null; })()", "the runs table")
        p.page.locator(".nx47-left").screenshot(path=str(site["shots"] / f"runs-{width}.png"))
        cells = p.page.evaluate("() => [...document.querySelectorAll('.nx47-runs tr:first-child th, "
                                ".nx47-runs tbody tr:first-child td')].map(c => Math.round(c.getBoundingClientRect().width))")
        (site["shots"] / f"runs-{width}.txt").write_text(f"{r}\n{cells}\n")
        assert r["scrollWidth"] <= r["clientWidth"] + 1, r  # nothing cut, no sideways scroll
        assert r["tableRight"] <= r["colRight"] + 1 and r["lastThRight"] <= r["colRight"] + 1, r  # QA column in
        assert all(row["status"] == 1 and row["started"] == 1 for row in r["rows"]), r["rows"]
        assert r["linkColour"] != r["textColour"] and "underline" in r["underline"], r
        live = next(row for row in r["rows"] if row["outcome"] == "running")
        assert float(live["tookV"]) >= LIVE_AGE_S and live["took"] not in ("-", "0.0s"), live
        assert r["choice"] and r["choiceIndex"] >= 0, r  # the Open run choice is never blank
        if width == 1600:
            # sortable: score ascending, then descending (the running run has none: last)
            p.page.click(".nx47-runs th[data-col='score']")
            order = p.wait("(() => { const th = document.querySelector(\".nx47-runs th[data-col='score']\"); "
                           "return th.dataset.sorted === 'asc' ? [...document.querySelectorAll('.nx47-runs tbody tr')]"
                           ".map(tr => tr.dataset.outcome) : null; })()", "sorted by score")
            assert order == ["fallback", "running"], order
            p.page.click(".nx47-runs th[data-col='duration']")
            p.page.click(".nx47-runs th[data-col='duration']")
            took = p.wait("(() => { const th = document.querySelector(\".nx47-runs th[data-col='duration']\"); "
                          "return th.dataset.sorted === 'desc' ? [...document.querySelectorAll('.nx47-runs tbody "
                          "td.nx47-took')].map(td => parseFloat(td.dataset.v)) : null; })()", "sorted by duration")
            assert took == sorted(took, reverse=True) and took[0] == DONE_DURATION_S, took


# -- item 10: charts at their displayed size -----------------------------------------
CHARTS_JS = """() => {
  const img = document.querySelector('img.nx47-charts-image, .nx47-charts-image img');
  if (!img || !img.naturalWidth) return null;
  const r = img.getBoundingClientRect();
  return {nw: img.naturalWidth, nh: img.naturalHeight, w: r.width, h: r.height, dpr: window.devicePixelRatio,
          box: document.querySelector('.nx47-charts-box').getBoundingClientRect().width};
}"""


@pytest.mark.parametrize("width,dpr", [(1600, 1.0), (800, 2.0)])
def test_the_charts_png_has_the_displayed_size_times_the_pixel_ratio(site, page_at, width, dpr):
    p = page_at(site["done"], width, dpr=dpr)
    c = p.wait("(() => { const c = (" + CHARTS_JS + ")(); return c && Math.abs(c.w - c.box) < 1.5 && "
               "Math.abs(c.nw - c.w * c.dpr) <= 1 ? c : null; })()", "charts redrawn at the box's width",
               timeout_s=30)
    assert c["dpr"] == dpr
    assert abs(c["nw"] - round(c["w"] * dpr)) <= 1 and abs(c["nh"] - round(c["h"] * dpr)) <= 1, c
    assert c["w"] >= 0.98 * c["box"], c  # as wide as its column: no stretching, no blur


# -- item 7: the QA canvas -------------------------------------------------------------
CANVAS_JS = """() => {
  const cs = [...document.querySelectorAll('canvas.nx47-qa-canvas')].filter(c => c.getClientRects().length);
  const cam = document.querySelector('.nx47-camera');
  const col = document.querySelector('.nx47-right').getBoundingClientRect();
  return {panels: cs.map(c => { const r = c.getBoundingClientRect();
            const title = c.closest('.nx47-qa-panel').querySelector('.nx47-qa-title').textContent;
            return {x: r.left, y: r.top, w: r.width, h: r.height, cw: c.width, ch: c.height, title: title,
                    rendering: getComputedStyle(c).imageRendering}; }),
          cam: cam ? {...cam.dataset} : null, col: {left: col.left, right: col.right, width: col.width}};
}"""
PIXELS_JS = """([x, y, r]) => {
  const c = document.querySelector('canvas.nx47-qa-canvas'); const b = c.getBoundingClientRect();
  const k = c.width / b.width; const ctx = c.getContext('2d'); const out = [];
  for (let dy = -r; dy <= r; dy++) for (let dx = -r; dx <= r; dx++) {
    const d = ctx.getImageData(Math.round((x - b.left + dx) * k), Math.round((y - b.top + dy) * k), 1, 1).data;
    out.push([d[0], d[1], d[2]].join(','));
  }
  return out;
}"""


def _image_point(panel: dict, cam: dict, x: float, y: float) -> tuple[float, float]:
    """The image point under page point (x, y), from the camera the page shows."""
    k = panel["cw"] / panel["w"]  # canvas pixels per CSS pixel
    s, cx, cy = float(cam["scale"]), float(cam["cx"]), float(cam["cy"])
    vw, vh = float(cam["vw"]), float(cam["vh"])
    return ((x - panel["x"]) * k - vw / 2) / s + cx, ((y - panel["y"]) * k - vh / 2) / s + cy


def test_the_qa_canvas_fills_its_column_zooms_at_the_cursor_pans_and_resets(site, page_at):
    p = page_at(site["done"], 1600)
    c = p.wait("(() => { const c = (" + CANVAS_JS + ")(); return c.panels.length === 1 && c.cam && "
               "Math.abs(c.panels[0].cw - c.panels[0].w) < 1.5 ? c : null; })()", "the canvas at its width")
    panel, cam = c["panels"][0], c["cam"]
    assert panel["w"] >= 0.95 * c["col"]["width"], c  # the picture fills its column
    assert panel["rendering"] == "pixelated" and panel["cw"] == round(panel["w"]), c  # crisp: 1 px per px
    assert float(cam["zoom"]) == 1.0 and "image" in panel["title"], c
    # the slice fits the view at zoom 1 (96 voxels over its shorter side), and the view the window
    assert float(cam["scale"]) == pytest.approx(min(panel["cw"], panel["ch"]) / 96, rel=0.02)
    assert 300 <= panel["h"] <= 0.8 * 1000, c

    # the slice is drawn: opaque, and many grey levels across the view
    x, y = panel["x"] + 0.3 * panel["w"], panel["y"] + 0.4 * panel["h"]
    p.wait(f"({PIXELS_JS})([{x}, {y}, 0])[0].split(',').length === 3 && "
           f"new Set(({PIXELS_JS})([{panel['x'] + panel['w'] / 2}, {panel['y'] + panel['h'] / 2}, 40])).size > 20",
           "the slice drawn on the canvas")
    alpha = p.page.evaluate("([x, y]) => { const c = document.querySelector('canvas.nx47-qa-canvas'); "
                            "const b = c.getBoundingClientRect(); return c.getContext('2d').getImageData("
                            "Math.round(x - b.left), Math.round(y - b.top), 1, 1).data[3]; }", [x, y])
    assert alpha == 255

    # wheel up three notches at a point off centre: zooms in, the point under the cursor stays put
    before = _image_point(panel, cam, x, y)
    colours = set(p.page.evaluate(PIXELS_JS, [x, y, 2]))
    p.page.mouse.move(x, y)
    scroll0 = p.page.evaluate("() => document.scrollingElement.scrollTop")
    p.page.mouse.wheel(0, -300)
    cam = p.wait("(() => { const d = document.querySelector('.nx47-camera').dataset; "
                 "return parseFloat(d.zoom) > 1.9 ? {...d} : null; })()", "the wheel zoom")
    assert float(cam["zoom"]) == pytest.approx(1.25 ** 3, rel=1e-3)
    after = _image_point(panel, cam, x, y)
    moved_px = max(abs(a - b) for a, b in zip(after, before)) * float(cam["scale"]) * panel["w"] / panel["cw"]
    assert moved_px <= 2.0, (before, after)
    assert p.page.evaluate("() => document.scrollingElement.scrollTop") == scroll0  # the page did not scroll
    # the canvas is redrawn a moment after the camera moved: the same voxel comes under the cursor
    wait_until(lambda: p.page.evaluate(PIXELS_JS, [x, y, 0])[0] in colours, 10, "the voxel under the cursor")

    # drag by (+60, +40): the image follows the pointer
    start = _image_point(panel, cam, x, y)
    p.page.mouse.down()
    p.page.mouse.move(x + 60, y + 40, steps=6)
    p.page.mouse.up()
    seen = {}

    def followed() -> bool:  # the last move and the button's release arrive last
        cam = seen["cam"] = p.page.evaluate("() => ({...document.querySelector('.nx47-camera').dataset})")
        end = seen["end"] = _image_point(panel, cam, x + 60, y + 40)
        moved = max(abs(a - b) for a, b in zip(end, start)) * float(cam["scale"]) * panel["w"] / panel["cw"]
        return moved <= 2.0

    wait_until(followed, 20, "the image to follow the drag", interval_s=0.1)
    cam = seen["cam"]
    assert float(cam["zoom"]) == pytest.approx(1.25 ** 3, rel=1e-3)  # a drag does not zoom

    # double-click: back to the fit
    p.page.mouse.dblclick(x, y)
    p.wait("document.querySelector('.nx47-camera').dataset.zoom === '1.0'", "the reset")
    p.page.mouse.move(x, y)
    p.page.mouse.wheel(0, -200)
    p.wait("parseFloat(document.querySelector('.nx47-camera').dataset.zoom) > 1.5", "zoom for the picture")
    p.frames()
    p.page.locator(".nx47-qa-panels").screenshot(path=str(site["shots"] / "qa-zoomed.png"))


def test_side_by_side_panels_are_at_least_300_px_with_titles(site, page_at):
    for width in (1600, 800):
        p = page_at(site["done"], width)
        p.wait("document.querySelectorAll('canvas.nx47-qa-canvas').length > 0 && "
               "!!document.querySelector('.nx47-camera')", "the canvas")
        p.page.locator(".nx47-view-mode button", has_text="side by side").click()
        c = p.wait("(() => { const c = (" + CANVAS_JS + ")(); return c.panels.length === 4 && "
                   "c.panels.every(q => Math.abs(q.cw - q.w) < 1.5) ? c : null; })()", "four panels")
        assert [q["title"] for q in c["panels"]] == ["image", "label", "prediction", "error map"], c
        for q in c["panels"]:
            assert q["w"] >= 300 and q["h"] >= 300 and q["rendering"] == "pixelated", q
            assert c["col"]["left"] - 1 <= q["x"] and q["x"] + q["w"] <= c["col"]["right"] + 1, (q, c["col"])
        if width == 1600:  # two by two in the 1600 px page's column
            assert len({round(q["y"]) for q in c["panels"]}) == 2, c


# -- the pictures of docs/dashboard.md --------------------------------------------------
@pytest.mark.slow
def test_docs_screenshots(site, page_at):
    """The page at 1600 × 1000 and 800 × 1000 (side by side), the QA panels, the runs
    table and a running run's header, as docs/dashboard.md shows them."""
    for width in (1600, 800):
        p = page_at(site["done"], width)
        p.wait("document.querySelectorAll('canvas.nx47-qa-canvas').length > 0 && "
               "!!document.querySelector('.nx47-camera')", "the canvas")
        p.page.locator(".nx47-view-mode button", has_text="side by side").click()
        p.wait("(() => { const c = (" + CANVAS_JS + ")(); return c.panels.length === 4 && "
               "c.panels.every(q => Math.abs(q.cw - q.w) < 1.5) ? c : null; })()", "four panels")
        p.wait("(" + CHARTS_JS + ")() !== null", "the charts")
        p.page.evaluate("() => { document.activeElement && document.activeElement.blur(); "
                        "document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; }); "
                        "window.scrollTo(0, 0); }")
        p.frames()
        p.page.screenshot(path=str(site["shots"] / "docs" / f"dashboard-{width}.png"))
        if width == 1600:
            p.page.locator(".nx47-qa-panels").screenshot(path=str(site["shots"] / "docs" / "qa-viewer.png"))
            p.page.locator(".nx47-runs-page").screenshot(path=str(site["shots"] / "docs" / "runs-page.png"))
    live = page_at(site["live"], 1600)
    live.wait("document.querySelector('.nx47-hd').dataset.state === 'running'", "the running run's header")
    live.page.locator(".nx47-header").screenshot(path=str(site["shots"] / "docs" / "run-header.png"))
