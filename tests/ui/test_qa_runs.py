"""The QA viewer (order, navigation, side by side, zoom, per-slice error counts,
marks in ``qa.json``) and the runs page (every run under a folder with its
outcome, one address each; a running run elsewhere is offered, not opened)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nx47_pipeline.config import RunConfig
from nx47_pipeline.data.demo import generate_demo_dataset
from nx47_pipeline.data.discovery import discover
from nx47_pipeline.io.jsonio import write_json
from nx47_pipeline.io.volumes import read_volume, write_volume
from nx47_pipeline.telemetry.bus import EventBus
from nx47_pipeline.telemetry.events import (
    EventKind,
    ExecCompletePayload,
    GlobalStatsPayload,
    PreviewPayload,
    RunStartPayload,
)
from nx47_pipeline.telemetry.journal import JournalSink
from nx47_widgets.app import Dashboard, build_dashboard
from nx47_widgets.render import SliceRequest, render_panels, render_slice, slice_counts
from nx47_widgets.state.outcome import Outcome
from nx47_widgets.state.qa import QaMarks
from nx47_widgets.state.runs import pick_run, scan_runs
from nx47_widgets.views.runs import runs_table
from waits import wait_until  # noqa: E402


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Two labelled volumes with a predicted mask each (half right, half wrong)."""
    root = tmp_path_factory.mktemp("qa") / "data"
    generate_demo_dataset(root, n_train=2, n_test=1, shape=24, seed=9)
    inv = discover(root)
    out = []
    for i, pair in enumerate(inv.pairs):
        lab = read_volume(pair.label_path, kind="label")
        pred = (lab == 1).astype(np.uint8)
        pred[:, :12] = 1 - pred[:, :12]  # wrong in one half: FPs and FNs
        p = root.parent / f"pred_{i}.tif"
        write_volume(p, pred)
        out.append((pair, p, lab, pred))
    return root, out


def preview(pair, pred_path, score):
    return PreviewPayload(volume_id=pair.id, split="val", shape=list(read_volume(pair.image_path).shape),
                          image_path=str(pair.image_path), label_path=str(pair.label_path),
                          pred_path=str(pred_path), score=score)


def publish(out: Path, *events) -> None:
    bus = EventBus()
    bus.attach(JournalSink(out / "journal.jsonl"))
    for kind, payload in events:
        bus.publish(kind, payload)
    bus.close()


def test_qa_viewer_orders_navigates_zooms_counts_and_saves_marks(tmp_path, volumes):
    root, vols = volumes
    out = tmp_path / "run"
    (a, pa, lab_a, pred_a), (b, pb, _lb, _pb) = vols
    publish(out, (EventKind.RUN_START, RunStartPayload(run_id="q", out_dir=str(out), pid=1)),
            (EventKind.PREVIEW, preview(a, pa, 0.7)), (EventKind.PREVIEW, preview(b, pb, 0.3)),
            (EventKind.EXEC_COMPLETE, ExecCompletePayload(status="ok", duration_s=1.0)))
    d = Dashboard(RunConfig(data_root=str(root), out_dir=str(out)), start_pump=False)
    try:
        d.pump.pump_once()
        v = d.panels.preview
        keys = [o[1] for o in v.volume.options]
        assert keys == [f"val/{a.id}", f"val/{b.id}"]
        v.worst_first.value = True
        assert [o[1] for o in v.volume.options] == [f"val/{b.id}", f"val/{a.id}"]  # 0.3 first
        assert "0.300" in v.volume.options[0][0]
        v.volume.value = f"val/{b.id}"
        v.keys["next_volume"].click()
        assert d.state.preview.volume == f"val/{a.id}"
        i0 = d.state.preview.index
        v.keys["next_slice"].click()
        assert d.state.preview.index == i0 + 1 and v.index.value == i0 + 1
        v.toggles["error"].click()  # the "e" key
        assert v.overlays["error"].value is True

        # side by side: image | label | prediction | error, one titled panel each, the
        # whole slice at one pixel per voxel (the canvas zooms in the browser)
        v.layout_mode.value = "side"
        req = v.make_request()
        side = render_panels(req)
        assert [t for t, _ in side] == ["image", "label", "prediction", "error map"]
        sizes = {Image.open(io.BytesIO(png)).size for _, png in side}
        z = v.make_request()
        full = np.asarray(Image.open(io.BytesIO(render_slice(SliceRequest(
            image=z.image, axis=z.axis, index=z.index, overlays=(), min_size=1)))))
        assert sizes == {(full.shape[1], full.shape[0])}
        wait_until(lambda: v.canvas.n_shown == 4, 10, "four panels", interval_s=0.02)
        assert v.canvas.n_shown == 4 and "error map" in v.canvas.panels[3].title.value
        v.layout_mode.value = "overlay"
        one = render_panels(v.make_request())
        assert len(one) == 1 and one[0][0] == "image + label + prediction + error map"
        # zoom 2 (the slider) around the middle of the view: the image doubles, centred
        wait_until(lambda: v.canvas.n_shown == 1, 10, "one panel", interval_s=0.02)
        cam = v.canvas.camera
        w0 = cam.image_rect()[2]
        v.zoom.value = 2.0
        assert cam.zoom == 2.0 and abs(cam.image_rect()[2] - 2 * w0) < 1e-6
        assert "data-zoom='2.0'" in v.view_info.value
        # render_slice still crops a window (zoom 2 around a corner: a quarter)
        crop = np.asarray(Image.open(io.BytesIO(render_slice(SliceRequest(
            image=z.image, axis=z.axis, index=z.index, overlays=(), min_size=1, zoom=2.0,
            center=(0.0, 0.0))))))
        assert crop.shape[0] == full.shape[0] // 2 and (crop == full[:crop.shape[0], :crop.shape[1]]).all()

        # per-slice false positives / negatives, ignore region left out, on a slice
        # where the prediction both adds and misses surface
        both = [i for i in range(lab_a.shape[0])
                if ((pred_a[i] != 0) & (lab_a[i] == 0)).any() and ((pred_a[i] == 0) & (lab_a[i] == 1)).any()]
        assert both, "the demo volume has no slice with both error kinds"
        v.index.value = both[len(both) // 2]
        z = v.make_request()
        counts = slice_counts(z)
        sl_lab, sl_pred = lab_a[z.index], pred_a[z.index] != 0
        valid = sl_lab != 2
        assert counts["fp"] == int((sl_pred & (sl_lab == 0) & valid).sum()) > 0
        assert counts["fn"] == int((~sl_pred & (sl_lab == 1) & valid).sum()) > 0
        v._on_counts(z, counts)
        assert f"data-fp='{counts['fp']}'" in v.counts.value and "false negatives" in v.counts.value

        # marks: saved to qa.json at once, shown, and read back by the runs page
        v.qa.mark_fail.click()
        v.qa.note.value = "misses the lower sheet"
        saved = json.loads((out / "qa.json").read_text())
        entry = saved["volumes"][f"val/{a.id}"]
        assert entry["mark"] == "fail" and entry["note"] == "misses the lower sheet"
        assert "data-mark='fail'" in v.qa.mark_info.value
        assert QaMarks.load(out).counts() == {"pass": 0, "fail": 1, "note": 1}
        d.panels.runs.refresh_button.click()
        assert "1 fail" in d.panels.runs.table.value
    finally:
        d.close()


def _finished(out: Path, status="ok", stats=None) -> None:
    publish(out, (EventKind.RUN_START, RunStartPayload(run_id=out.name, out_dir=str(out), pid=1)),
            (EventKind.GLOBAL_STATS, GlobalStatsPayload(stats=stats or {})),
            (EventKind.EXEC_COMPLETE, ExecCompletePayload(status=status, duration_s=42.0)))
    write_json(out / "stats.json", stats or {})


def test_runs_page_lists_every_run_with_its_outcome_and_address(tmp_path, volumes):
    root, _ = volumes
    runs = tmp_path / "runs"
    _finished(runs / "a-ok", stats={"status": "ok", "validation": {"mean_score": 0.61},
                                    "counts": {"train": 4, "val": 2, "test": 2, "fallback_volumes": 0},
                                    "coverage": {"coverage_pct_selected_vs_discovered": 75.0}})
    _finished(runs / "b-fallback", stats={"counts": {"test": 2, "fallback_volumes": 2}})
    lost = runs / "c-lost"
    publish(lost, (EventKind.RUN_START, RunStartPayload(run_id="l", out_dir=str(lost), pid=1)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (lost / "run.lock").write_text(str(dead.pid))
    killed = runs / "nested" / "d-killed"
    publish(killed, (EventKind.RUN_START, RunStartPayload(run_id="k", out_dir=str(killed), pid=1)))
    write_json(killed / "killed.json", {"pid": 1, "ts": time.time() + 1, "reason": "ignored Stop"})
    live = runs / "e-live"
    publish(live, (EventKind.RUN_START, RunStartPayload(run_id="r", out_dir=str(live), pid=1)))
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    (live / "run.lock").write_text(str(proc.pid))
    try:
        found = {s.folder.name: s for s in scan_runs(runs)}
        assert set(found) == {"a-ok", "b-fallback", "c-lost", "d-killed", "e-live"}
        assert found["a-ok"].verdict.outcome is Outcome.OK and found["a-ok"].score == 0.61
        assert found["a-ok"].coverage_pct == 75.0 and found["a-ok"].duration_s == 42.0
        assert found["b-fallback"].verdict.outcome is Outcome.FALLBACK
        assert found["c-lost"].verdict.outcome is Outcome.LOST
        assert found["d-killed"].verdict.outcome is Outcome.KILLED
        assert found["e-live"].running and f"pid {proc.pid}" in found["e-live"].holder
        assert pick_run(list(found.values())).folder.name == "e-live"
        html = runs_table(list(found.values()), links=True)
        assert f"href='?out={runs}/a-ok'".replace(" ", "%20") in html or "?out=" in html
        assert html.count("class='nx47-run-link'") == 5
        assert "data-outcome='lost'" in html and "data-outcome='killed'" in html

        # a page on an empty folder under that root keeps that folder: the running
        # run is offered for attach, never taken
        d = Dashboard(RunConfig(data_root=str(root), out_dir=str(runs / "new")), start_pump=False)
        try:
            assert d.session.folder is None and not d.running
            assert d.settings.out_dir.value == str(runs / "new") and not (runs / "new").exists()
            assert "e-live" in d.controls.offer_text.value
            assert d.controls.offer_button.layout.display != "none"
            d.controls.offer_button.click()
            assert d.session.folder == live.resolve() and d.running
            assert "e-live" in d.panels.runs.table.value and "shown" in d.panels.runs.table.value
            d.panels.runs.choice.value = str(runs / "a-ok")
            d.panels.runs.open_button.click()
            assert d.session.folder == (runs / "a-ok").resolve()
        finally:
            d.close()
        # the page's address names a run: that one opens, not the running one
        env = {"VOILA_SERVER_URL": "/", "QUERY_STRING": f"out={runs}/b-fallback"}
        d = build_dashboard(RunConfig(data_root=str(root), out_dir=str(runs / "new")),
                            environ=env, start_pump=False)
        try:
            assert d.session.folder == (runs / "b-fallback").resolve()
            assert d.page.enabled and any("b-fallback" in s for s in d.page.scripts)
        finally:
            d.close()
    finally:
        proc.kill()
